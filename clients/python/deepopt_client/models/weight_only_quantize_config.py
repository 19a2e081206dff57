from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.weight_only_quantize_config_accuracy_level_type_0 import WeightOnlyQuantizeConfigAccuracyLevelType0
from ..models.weight_only_quantize_config_algorithm import WeightOnlyQuantizeConfigAlgorithm
from ..models.weight_only_quantize_config_fusion import WeightOnlyQuantizeConfigFusion
from ..models.weight_only_quantize_config_weight_dtype import WeightOnlyQuantizeConfigWeightDtype
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.accuracy_guard import AccuracyGuard


T = TypeVar("T", bound="WeightOnlyQuantizeConfig")


@_attrs_define
class WeightOnlyQuantizeConfig:
    """Weight-only quantization: block-wise 4- or 8-bit weights of MatMul/Linear layers, float activations.

    Each block of `block_size` input-channel weights of an output channel gets its own scale. ONNX: MatMul (and
    Gemm) weights become `com.microsoft.MatMulNBits`; PyTorch: each `nn.Linear` keeps int8 or packed int4 weights
    and dequantizes them in its forward (plain aten ops: the saved model loads without this project). For
    transformer and LLM-style MatMul-heavy models. AWQ's clipping search: Lin et al., 2023,
    https://arxiv.org/abs/2306.00978; GPTQ: Frantar et al., 2022, https://arxiv.org/abs/2210.17323

        Attributes:
            type_ (Literal['quantize']): The pass: `quantize`; `mode` selects the variant. Default: 'quantize'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            exclude (list[str] | Unset): Node names, op types or glob patterns of nodes to leave in float (ONNX; layer names
                such as `fc1` and weight names such as `fc1.weight` work too), or layer names (PyTorch).
            mode (Literal['weight_only'] | Unset): Block-wise low-bit weights, float activations. Default: 'weight_only'.
            weight_dtype (WeightOnlyQuantizeConfigWeightDtype | Unset): Bits per weight. Default:
                WeightOnlyQuantizeConfigWeightDtype.INT4.
            block_size (int | Unset): Weights per block along the input dimension (a power of two, 16 to 256); one scale per
                block. Default: 32.
            symmetric (bool | Unset): Symmetric blocks (no zero points). `awq_clip` and the PyTorch path are always
                symmetric. Default: False.
            algorithm (WeightOnlyQuantizeConfigAlgorithm | Unset): `awq_clip`: per-block clipping searched to minimize the
                error weighted by the calibration data's activations (plain error without calibration data); `rtn`: round to
                nearest; `hqq`: half-quadratic (int4, no data); `gptq`: needs calibration data; `k_quant`: llama.cpp k-quants;
                `auto`: `awq_clip` with calibration data, else `rtn`. `hqq`, `gptq` and `k_quant` are ONNX only. Default:
                WeightOnlyQuantizeConfigAlgorithm.AUTO.
            accuracy_level (None | Unset | WeightOnlyQuantizeConfigAccuracyLevelType0): `MatMulNBits` compute type: 0/None
                default, 1 fp32, 2 fp16, 3 bf16, 4 int8. ONNX only.
            num_samples (int | Unset): Calibration rows used by `awq_clip` and `gptq`. Default: 32.
            quantize_embeddings (bool | Unset): Also store large embedding tables as int8 with one scale per row. ONNX only.
                Default: True.
            fusion (WeightOnlyQuantizeConfigFusion | Unset): ONNX Runtime transformer fusion before quantizing: `auto`
                (none: measured faster once quantized), `full`, `no_attention` (LayerNorm/GELU fused, attention left as MatMuls)
                or `none`. ONNX only. Default: WeightOnlyQuantizeConfigFusion.AUTO.
            preprocess (bool | Unset): Run ONNX Runtime's quantization pre-processing first (fusion, offline basic graph
                optimization, shape inference), so that quantization lands on the fused ops. ONNX only. Default: True.
            accuracy_guard (AccuracyGuard | None | Unset): Return the most sensitive layers to float until the drop is
                within bounds. ONNX only.
    """

    type_: Literal["quantize"] = "quantize"
    version: int | Unset = 1
    exclude: list[str] | Unset = UNSET
    mode: Literal["weight_only"] | Unset = "weight_only"
    weight_dtype: WeightOnlyQuantizeConfigWeightDtype | Unset = WeightOnlyQuantizeConfigWeightDtype.INT4
    block_size: int | Unset = 32
    symmetric: bool | Unset = False
    algorithm: WeightOnlyQuantizeConfigAlgorithm | Unset = WeightOnlyQuantizeConfigAlgorithm.AUTO
    accuracy_level: None | Unset | WeightOnlyQuantizeConfigAccuracyLevelType0 = UNSET
    num_samples: int | Unset = 32
    quantize_embeddings: bool | Unset = True
    fusion: WeightOnlyQuantizeConfigFusion | Unset = WeightOnlyQuantizeConfigFusion.AUTO
    preprocess: bool | Unset = True
    accuracy_guard: AccuracyGuard | None | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        from ..models.accuracy_guard import AccuracyGuard  # noqa: PLC0415

        type_ = self.type_

        version = self.version

        exclude: list[str] | Unset = UNSET
        if not isinstance(self.exclude, Unset):
            exclude = self.exclude

        mode = self.mode

        weight_dtype: str | Unset = UNSET
        if not isinstance(self.weight_dtype, Unset):
            weight_dtype = self.weight_dtype.value

        block_size = self.block_size

        symmetric = self.symmetric

        algorithm: str | Unset = UNSET
        if not isinstance(self.algorithm, Unset):
            algorithm = self.algorithm.value

        accuracy_level: int | None | Unset
        if isinstance(self.accuracy_level, Unset):
            accuracy_level = UNSET
        elif isinstance(self.accuracy_level, WeightOnlyQuantizeConfigAccuracyLevelType0):
            accuracy_level = self.accuracy_level.value
        else:
            accuracy_level = self.accuracy_level

        num_samples = self.num_samples

        quantize_embeddings = self.quantize_embeddings

        fusion: str | Unset = UNSET
        if not isinstance(self.fusion, Unset):
            fusion = self.fusion.value

        preprocess = self.preprocess

        accuracy_guard: dict[str, Any] | None | Unset
        if isinstance(self.accuracy_guard, Unset):
            accuracy_guard = UNSET
        elif isinstance(self.accuracy_guard, AccuracyGuard):
            accuracy_guard = self.accuracy_guard.to_dict()
        else:
            accuracy_guard = self.accuracy_guard

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "type": type_,
            }
        )
        if version is not UNSET:
            field_dict["version"] = version
        if exclude is not UNSET:
            field_dict["exclude"] = exclude
        if mode is not UNSET:
            field_dict["mode"] = mode
        if weight_dtype is not UNSET:
            field_dict["weight_dtype"] = weight_dtype
        if block_size is not UNSET:
            field_dict["block_size"] = block_size
        if symmetric is not UNSET:
            field_dict["symmetric"] = symmetric
        if algorithm is not UNSET:
            field_dict["algorithm"] = algorithm
        if accuracy_level is not UNSET:
            field_dict["accuracy_level"] = accuracy_level
        if num_samples is not UNSET:
            field_dict["num_samples"] = num_samples
        if quantize_embeddings is not UNSET:
            field_dict["quantize_embeddings"] = quantize_embeddings
        if fusion is not UNSET:
            field_dict["fusion"] = fusion
        if preprocess is not UNSET:
            field_dict["preprocess"] = preprocess
        if accuracy_guard is not UNSET:
            field_dict["accuracy_guard"] = accuracy_guard

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.accuracy_guard import AccuracyGuard  # noqa: PLC0415

        d = dict(src_dict)
        type_ = cast(Literal["quantize"], d.pop("type"))
        if type_ != "quantize":
            raise ValueError(f"type must match const 'quantize', got '{type_}'")

        version = d.pop("version", UNSET)

        exclude = cast(list[str], d.pop("exclude", UNSET))

        mode = cast(Literal["weight_only"] | Unset, d.pop("mode", UNSET))
        if mode != "weight_only" and not isinstance(mode, Unset):
            raise ValueError(f"mode must match const 'weight_only', got '{mode}'")

        _weight_dtype = d.pop("weight_dtype", UNSET)
        weight_dtype: WeightOnlyQuantizeConfigWeightDtype | Unset
        if isinstance(_weight_dtype, Unset):
            weight_dtype = UNSET
        else:
            weight_dtype = WeightOnlyQuantizeConfigWeightDtype(_weight_dtype)

        block_size = d.pop("block_size", UNSET)

        symmetric = d.pop("symmetric", UNSET)

        _algorithm = d.pop("algorithm", UNSET)
        algorithm: WeightOnlyQuantizeConfigAlgorithm | Unset
        if isinstance(_algorithm, Unset):
            algorithm = UNSET
        else:
            algorithm = WeightOnlyQuantizeConfigAlgorithm(_algorithm)

        def _parse_accuracy_level(data: object) -> None | Unset | WeightOnlyQuantizeConfigAccuracyLevelType0:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, int):
                    raise TypeError()
                accuracy_level_type_0 = WeightOnlyQuantizeConfigAccuracyLevelType0(data)

                return accuracy_level_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | Unset | WeightOnlyQuantizeConfigAccuracyLevelType0, data)

        accuracy_level = _parse_accuracy_level(d.pop("accuracy_level", UNSET))

        num_samples = d.pop("num_samples", UNSET)

        quantize_embeddings = d.pop("quantize_embeddings", UNSET)

        _fusion = d.pop("fusion", UNSET)
        fusion: WeightOnlyQuantizeConfigFusion | Unset
        if isinstance(_fusion, Unset):
            fusion = UNSET
        else:
            fusion = WeightOnlyQuantizeConfigFusion(_fusion)

        preprocess = d.pop("preprocess", UNSET)

        def _parse_accuracy_guard(data: object) -> AccuracyGuard | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                accuracy_guard_type_0 = AccuracyGuard.from_dict(data)

                return accuracy_guard_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(AccuracyGuard | None | Unset, data)

        accuracy_guard = _parse_accuracy_guard(d.pop("accuracy_guard", UNSET))

        weight_only_quantize_config = cls(
            type_=type_,
            version=version,
            exclude=exclude,
            mode=mode,
            weight_dtype=weight_dtype,
            block_size=block_size,
            symmetric=symmetric,
            algorithm=algorithm,
            accuracy_level=accuracy_level,
            num_samples=num_samples,
            quantize_embeddings=quantize_embeddings,
            fusion=fusion,
            preprocess=preprocess,
            accuracy_guard=accuracy_guard,
        )

        return weight_only_quantize_config
