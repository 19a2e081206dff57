from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="Fp16QuantizeConfig")


@_attrs_define
class Fp16QuantizeConfig:
    """float16 weights and compute; ops without a float16 kernel run in float32 behind casts.

    ONNX: ONNX Runtime's float16 converter with its block list. PyTorch: half-precision weights and compute.
    Micikevicius et al., 2018, https://arxiv.org/abs/1710.03740

        Attributes:
            type_ (Literal['quantize']): The pass: `quantize`; `mode` selects the variant. Default: 'quantize'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            exclude (list[str] | Unset): Node names, op types or glob patterns of nodes to leave in float (ONNX; layer names
                such as `fc1` and weight names such as `fc1.weight` work too), or layer names (PyTorch).
            keep_io_types (bool | Unset): Keep the model's float inputs and outputs in float32 (casts at the edges); false:
                they take the 16-bit type too (ONNX only). Default: True.
            mode (Literal['fp16'] | Unset): float16 weights and compute. Default: 'fp16'.
    """

    type_: Literal["quantize"] = "quantize"
    version: int | Unset = 1
    exclude: list[str] | Unset = UNSET
    keep_io_types: bool | Unset = True
    mode: Literal["fp16"] | Unset = "fp16"

    def to_dict(self) -> dict[str, Any]:
        type_ = self.type_

        version = self.version

        exclude: list[str] | Unset = UNSET
        if not isinstance(self.exclude, Unset):
            exclude = self.exclude

        keep_io_types = self.keep_io_types

        mode = self.mode

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
        if keep_io_types is not UNSET:
            field_dict["keep_io_types"] = keep_io_types
        if mode is not UNSET:
            field_dict["mode"] = mode

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        type_ = cast(Literal["quantize"], d.pop("type"))
        if type_ != "quantize":
            raise ValueError(f"type must match const 'quantize', got '{type_}'")

        version = d.pop("version", UNSET)

        exclude = cast(list[str], d.pop("exclude", UNSET))

        keep_io_types = d.pop("keep_io_types", UNSET)

        mode = cast(Literal["fp16"] | Unset, d.pop("mode", UNSET))
        if mode != "fp16" and not isinstance(mode, Unset):
            raise ValueError(f"mode must match const 'fp16', got '{mode}'")

        fp_16_quantize_config = cls(
            type_=type_,
            version=version,
            exclude=exclude,
            keep_io_types=keep_io_types,
            mode=mode,
        )

        return fp_16_quantize_config
