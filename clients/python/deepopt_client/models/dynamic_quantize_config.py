from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.dynamic_quantize_config_fusion import DynamicQuantizeConfigFusion
from ..models.dynamic_quantize_config_weight_dtype import DynamicQuantizeConfigWeightDtype
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.accuracy_guard import AccuracyGuard


T = TypeVar("T", bound="DynamicQuantizeConfig")


@_attrs_define
class DynamicQuantizeConfig:
    """Dynamic int8 quantization: int8 weights, activations quantized on the fly at run time.

    ONNX models go through ONNX Runtime's pre-processing and quantizer; PyTorch models through torch's dynamic
    quantization of Linear layers. Paper: Jacob et al., 2018, https://arxiv.org/abs/1712.05877

        Attributes:
            type_ (Literal['quantize']): The pass: `quantize`; `mode` selects the variant. Default: 'quantize'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            exclude (list[str] | Unset): Node names, op types or glob patterns of nodes to leave in float (ONNX; layer names
                such as `fc1` and weight names such as `fc1.weight` work too), or layer names (PyTorch).
            mode (Literal['dynamic'] | Unset): Weights int8/uint8, activations quantized per batch. Default: 'dynamic'.
            weight_dtype (DynamicQuantizeConfigWeightDtype | Unset): Storage type of quantized weights. Default:
                DynamicQuantizeConfigWeightDtype.INT8.
            per_channel (bool | None | Unset): One scale per output channel instead of per tensor. Default (null): the
                measured best for the model at hand: per channel on transformers (all-MiniLM-L6-v2: cosine fidelity 0.993
                against 0.963 per tensor, same size and speed), per tensor on other models (a digits MLP: 0.9995 against 0.997).
            reduce_range (bool | Unset): 7-bit weights, for CPUs without VNNI where u8s8 products may saturate. ONNX only.
                Default: False.
            fusion (DynamicQuantizeConfigFusion | Unset): ONNX Runtime transformer fusion before quantizing: `auto` (none:
                measured faster once quantized), `full`, `no_attention` (LayerNorm/GELU fused, attention left as MatMuls) or
                `none`. ONNX only. Default: DynamicQuantizeConfigFusion.AUTO.
            preprocess (bool | Unset): Run ONNX Runtime's quantization pre-processing first (fusion, offline basic graph
                optimization, shape inference), so that quantization lands on the fused ops. ONNX only. Default: True.
            accuracy_guard (AccuracyGuard | None | Unset): Return the most sensitive layers to float until the drop is
                within bounds. ONNX only.
    """

    type_: Literal["quantize"] = "quantize"
    version: int | Unset = 1
    exclude: list[str] | Unset = UNSET
    mode: Literal["dynamic"] | Unset = "dynamic"
    weight_dtype: DynamicQuantizeConfigWeightDtype | Unset = DynamicQuantizeConfigWeightDtype.INT8
    per_channel: bool | None | Unset = UNSET
    reduce_range: bool | Unset = False
    fusion: DynamicQuantizeConfigFusion | Unset = DynamicQuantizeConfigFusion.AUTO
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

        per_channel: bool | None | Unset
        if isinstance(self.per_channel, Unset):
            per_channel = UNSET
        else:
            per_channel = self.per_channel

        reduce_range = self.reduce_range

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
        if per_channel is not UNSET:
            field_dict["per_channel"] = per_channel
        if reduce_range is not UNSET:
            field_dict["reduce_range"] = reduce_range
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

        mode = cast(Literal["dynamic"] | Unset, d.pop("mode", UNSET))
        if mode != "dynamic" and not isinstance(mode, Unset):
            raise ValueError(f"mode must match const 'dynamic', got '{mode}'")

        _weight_dtype = d.pop("weight_dtype", UNSET)
        weight_dtype: DynamicQuantizeConfigWeightDtype | Unset
        if isinstance(_weight_dtype, Unset):
            weight_dtype = UNSET
        else:
            weight_dtype = DynamicQuantizeConfigWeightDtype(_weight_dtype)

        def _parse_per_channel(data: object) -> bool | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(bool | None | Unset, data)

        per_channel = _parse_per_channel(d.pop("per_channel", UNSET))

        reduce_range = d.pop("reduce_range", UNSET)

        _fusion = d.pop("fusion", UNSET)
        fusion: DynamicQuantizeConfigFusion | Unset
        if isinstance(_fusion, Unset):
            fusion = UNSET
        else:
            fusion = DynamicQuantizeConfigFusion(_fusion)

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

        dynamic_quantize_config = cls(
            type_=type_,
            version=version,
            exclude=exclude,
            mode=mode,
            weight_dtype=weight_dtype,
            per_channel=per_channel,
            reduce_range=reduce_range,
            fusion=fusion,
            preprocess=preprocess,
            accuracy_guard=accuracy_guard,
        )

        return dynamic_quantize_config
