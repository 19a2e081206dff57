from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.static_quantize_config_activation_dtype import StaticQuantizeConfigActivationDtype
from ..models.static_quantize_config_calibration import StaticQuantizeConfigCalibration
from ..models.static_quantize_config_fusion import StaticQuantizeConfigFusion
from ..models.static_quantize_config_quant_format import StaticQuantizeConfigQuantFormat
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.accuracy_guard import AccuracyGuard


T = TypeVar("T", bound="StaticQuantizeConfig")


@_attrs_define
class StaticQuantizeConfig:
    """Static int8 quantization of weights and activations, with activation ranges calibrated on the job's
    calibration dataset (`calibration_dataset_id`).

    The graph is pre-processed first; only the inputs of weight-bearing ops (MatMul with a constant weight, Gemm,
    Conv) are quantized on transformers, whose residual stream, LayerNorm, Softmax and attention products stay
    float; CNNs are quantized from Conv to Conv. QDQ MatMuls run as integer kernels on the CPU. ONNX only (a
    PyTorch upload with `"outputs": ["onnx"]` is exported first). Jacob et al., 2018,
    https://arxiv.org/abs/1712.05877; calibration methods as compared by Wu et al., 2020,
    https://arxiv.org/abs/2004.09602

        Attributes:
            type_ (Literal['quantize']): The pass: `quantize`; `mode` selects the variant. Default: 'quantize'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            exclude (list[str] | Unset): Node names, op types or glob patterns of nodes to leave in float (ONNX; layer names
                such as `fc1` and weight names such as `fc1.weight` work too), or layer names (PyTorch).
            mode (Literal['static'] | Unset): Weights and activations int8, calibrated ranges. Default: 'static'.
            calibration (StaticQuantizeConfigCalibration | Unset): How activation ranges are chosen: `minmax` (observed
                range), `entropy` (KL divergence) or `percentile` (clip at `percentile` of |activation|). Default:
                StaticQuantizeConfigCalibration.PERCENTILE.
            percentile (float | Unset): The percentile of |activation| kept in range (calibration `percentile`). Default:
                99.999.
            quant_format (StaticQuantizeConfigQuantFormat | Unset): `qdq`: QuantizeLinear/DequantizeLinear pairs that ONNX
                Runtime fuses into integer kernels; `qoperator`: QLinearMatMul/QLinearConv operators. Default:
                StaticQuantizeConfigQuantFormat.QDQ.
            per_channel (bool | Unset): One weight scale per output channel instead of per tensor. Default: True.
            symmetric (bool | Unset): Symmetric activation ranges (zero point 0); weights are always symmetric. Default:
                False.
            activation_dtype (StaticQuantizeConfigActivationDtype | Unset): Activation type; x86 CPUs run uint8 x int8
                products fastest. Default: StaticQuantizeConfigActivationDtype.UINT8.
            num_samples (int | Unset): Calibration rows used (the first ones). Default: 64.
            fusion (StaticQuantizeConfigFusion | Unset): ONNX Runtime transformer fusion before quantizing: `auto` (none:
                measured faster once quantized), `full`, `no_attention` (LayerNorm/GELU fused, attention left as MatMuls) or
                `none`. ONNX only. Default: StaticQuantizeConfigFusion.AUTO.
            preprocess (bool | Unset): Run ONNX Runtime's quantization pre-processing first (fusion, offline basic graph
                optimization, shape inference), so that quantization lands on the fused ops. ONNX only. Default: True.
            accuracy_guard (AccuracyGuard | None | Unset): Return the most sensitive layers to float until the drop is
                within bounds.
    """

    type_: Literal["quantize"] = "quantize"
    version: int | Unset = 1
    exclude: list[str] | Unset = UNSET
    mode: Literal["static"] | Unset = "static"
    calibration: StaticQuantizeConfigCalibration | Unset = StaticQuantizeConfigCalibration.PERCENTILE
    percentile: float | Unset = 99.999
    quant_format: StaticQuantizeConfigQuantFormat | Unset = StaticQuantizeConfigQuantFormat.QDQ
    per_channel: bool | Unset = True
    symmetric: bool | Unset = False
    activation_dtype: StaticQuantizeConfigActivationDtype | Unset = StaticQuantizeConfigActivationDtype.UINT8
    num_samples: int | Unset = 64
    fusion: StaticQuantizeConfigFusion | Unset = StaticQuantizeConfigFusion.AUTO
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

        calibration: str | Unset = UNSET
        if not isinstance(self.calibration, Unset):
            calibration = self.calibration.value

        percentile = self.percentile

        quant_format: str | Unset = UNSET
        if not isinstance(self.quant_format, Unset):
            quant_format = self.quant_format.value

        per_channel = self.per_channel

        symmetric = self.symmetric

        activation_dtype: str | Unset = UNSET
        if not isinstance(self.activation_dtype, Unset):
            activation_dtype = self.activation_dtype.value

        num_samples = self.num_samples

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
        if calibration is not UNSET:
            field_dict["calibration"] = calibration
        if percentile is not UNSET:
            field_dict["percentile"] = percentile
        if quant_format is not UNSET:
            field_dict["quant_format"] = quant_format
        if per_channel is not UNSET:
            field_dict["per_channel"] = per_channel
        if symmetric is not UNSET:
            field_dict["symmetric"] = symmetric
        if activation_dtype is not UNSET:
            field_dict["activation_dtype"] = activation_dtype
        if num_samples is not UNSET:
            field_dict["num_samples"] = num_samples
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

        mode = cast(Literal["static"] | Unset, d.pop("mode", UNSET))
        if mode != "static" and not isinstance(mode, Unset):
            raise ValueError(f"mode must match const 'static', got '{mode}'")

        _calibration = d.pop("calibration", UNSET)
        calibration: StaticQuantizeConfigCalibration | Unset
        if isinstance(_calibration, Unset):
            calibration = UNSET
        else:
            calibration = StaticQuantizeConfigCalibration(_calibration)

        percentile = d.pop("percentile", UNSET)

        _quant_format = d.pop("quant_format", UNSET)
        quant_format: StaticQuantizeConfigQuantFormat | Unset
        if isinstance(_quant_format, Unset):
            quant_format = UNSET
        else:
            quant_format = StaticQuantizeConfigQuantFormat(_quant_format)

        per_channel = d.pop("per_channel", UNSET)

        symmetric = d.pop("symmetric", UNSET)

        _activation_dtype = d.pop("activation_dtype", UNSET)
        activation_dtype: StaticQuantizeConfigActivationDtype | Unset
        if isinstance(_activation_dtype, Unset):
            activation_dtype = UNSET
        else:
            activation_dtype = StaticQuantizeConfigActivationDtype(_activation_dtype)

        num_samples = d.pop("num_samples", UNSET)

        _fusion = d.pop("fusion", UNSET)
        fusion: StaticQuantizeConfigFusion | Unset
        if isinstance(_fusion, Unset):
            fusion = UNSET
        else:
            fusion = StaticQuantizeConfigFusion(_fusion)

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

        static_quantize_config = cls(
            type_=type_,
            version=version,
            exclude=exclude,
            mode=mode,
            calibration=calibration,
            percentile=percentile,
            quant_format=quant_format,
            per_channel=per_channel,
            symmetric=symmetric,
            activation_dtype=activation_dtype,
            num_samples=num_samples,
            fusion=fusion,
            preprocess=preprocess,
            accuracy_guard=accuracy_guard,
        )

        return static_quantize_config
