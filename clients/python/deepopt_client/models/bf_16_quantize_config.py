from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="Bf16QuantizeConfig")


@_attrs_define
class Bf16QuantizeConfig:
    """bfloat16 weights and compute.

    ONNX Runtime's CPU provider has bfloat16 kernels for few ops: those without one compute in float32 behind
    casts (listed in the decisions as `no_cpu_kernel`), so on CPU bf16 mainly halves the file. PyTorch: bfloat16
    weights and compute. Kalamkar et al., 2019, https://arxiv.org/abs/1905.12322

        Attributes:
            type_ (Literal['quantize']): The pass: `quantize`; `mode` selects the variant. Default: 'quantize'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            exclude (list[str] | Unset): Node names, op types or glob patterns of nodes to leave in float (ONNX; layer names
                such as `fc1` and weight names such as `fc1.weight` work too), or layer names (PyTorch).
            keep_io_types (bool | Unset): Keep the model's float inputs and outputs in float32 (casts at the edges); false:
                they take the 16-bit type too (ONNX only). Default: True.
            mode (Literal['bf16'] | Unset): bfloat16 weights and compute. Default: 'bf16'.
    """

    type_: Literal["quantize"] = "quantize"
    version: int | Unset = 1
    exclude: list[str] | Unset = UNSET
    keep_io_types: bool | Unset = True
    mode: Literal["bf16"] | Unset = "bf16"

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

        mode = cast(Literal["bf16"] | Unset, d.pop("mode", UNSET))
        if mode != "bf16" and not isinstance(mode, Unset):
            raise ValueError(f"mode must match const 'bf16', got '{mode}'")

        bf_16_quantize_config = cls(
            type_=type_,
            version=version,
            exclude=exclude,
            keep_io_types=keep_io_types,
            mode=mode,
        )

        return bf_16_quantize_config
