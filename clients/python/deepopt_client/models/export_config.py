from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="ExportConfig")


@_attrs_define
class ExportConfig:
    """Export to ONNX with `torch.onnx.export`; later passes run on the ONNX graph.

    The exported graph is checked with the ONNX checker and run in ONNX Runtime against the PyTorch model.

        Attributes:
            type_ (Literal['export']): The pass: `export`. Default: 'export'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            format_ (Literal['onnx'] | Unset): The target format; ONNX is the only one. Default: 'onnx'.
            opset (int | Unset): ONNX opset version of the exported graph. Default: 17.
            dynamic_batch (bool | Unset): Export with a symbolic batch dimension. Default: True.
    """

    type_: Literal["export"] = "export"
    version: int | Unset = 1
    format_: Literal["onnx"] | Unset = "onnx"
    opset: int | Unset = 17
    dynamic_batch: bool | Unset = True

    def to_dict(self) -> dict[str, Any]:
        type_ = self.type_

        version = self.version

        format_ = self.format_

        opset = self.opset

        dynamic_batch = self.dynamic_batch

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "type": type_,
            }
        )
        if version is not UNSET:
            field_dict["version"] = version
        if format_ is not UNSET:
            field_dict["format"] = format_
        if opset is not UNSET:
            field_dict["opset"] = opset
        if dynamic_batch is not UNSET:
            field_dict["dynamic_batch"] = dynamic_batch

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        type_ = cast(Literal["export"], d.pop("type"))
        if type_ != "export":
            raise ValueError(f"type must match const 'export', got '{type_}'")

        version = d.pop("version", UNSET)

        format_ = cast(Literal["onnx"] | Unset, d.pop("format", UNSET))
        if format_ != "onnx" and not isinstance(format_, Unset):
            raise ValueError(f"format must match const 'onnx', got '{format_}'")

        opset = d.pop("opset", UNSET)

        dynamic_batch = d.pop("dynamic_batch", UNSET)

        export_config = cls(
            type_=type_,
            version=version,
            format_=format_,
            opset=opset,
            dynamic_batch=dynamic_batch,
        )

        return export_config
