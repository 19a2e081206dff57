from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

if TYPE_CHECKING:
    from ..models.info import Info
    from ..models.tensor_info import TensorInfo


T = TypeVar("T", bound="ModelRead")


@_attrs_define
class ModelRead:
    """
    Attributes:
        id (str):
        name (str):
        format_ (str):
        filename (str):
        size_bytes (int):
        sha256 (str):
        num_parameters (int):
        inputs (list[TensorInfo]):
        outputs (list[TensorInfo]):
        info (Info): Everything inspection found (ops, opset, architecture).
        created_at (datetime.datetime):
    """

    id: str
    name: str
    format_: str
    filename: str
    size_bytes: int
    sha256: str
    num_parameters: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    info: Info
    created_at: datetime.datetime
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        id = self.id

        name = self.name

        format_ = self.format_

        filename = self.filename

        size_bytes = self.size_bytes

        sha256 = self.sha256

        num_parameters = self.num_parameters

        inputs = []
        for inputs_item_data in self.inputs:
            inputs_item = inputs_item_data.to_dict()
            inputs.append(inputs_item)

        outputs = []
        for outputs_item_data in self.outputs:
            outputs_item = outputs_item_data.to_dict()
            outputs.append(outputs_item)

        info = self.info.to_dict()

        created_at = self.created_at.isoformat()

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "id": id,
                "name": name,
                "format": format_,
                "filename": filename,
                "size_bytes": size_bytes,
                "sha256": sha256,
                "num_parameters": num_parameters,
                "inputs": inputs,
                "outputs": outputs,
                "info": info,
                "created_at": created_at,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.info import Info  # noqa: PLC0415
        from ..models.tensor_info import TensorInfo  # noqa: PLC0415

        d = dict(src_dict)
        id = d.pop("id")

        name = d.pop("name")

        format_ = d.pop("format")

        filename = d.pop("filename")

        size_bytes = d.pop("size_bytes")

        sha256 = d.pop("sha256")

        num_parameters = d.pop("num_parameters")

        inputs = []
        _inputs = d.pop("inputs")
        for inputs_item_data in _inputs:
            inputs_item = TensorInfo.from_dict(inputs_item_data)

            inputs.append(inputs_item)

        outputs = []
        _outputs = d.pop("outputs")
        for outputs_item_data in _outputs:
            outputs_item = TensorInfo.from_dict(outputs_item_data)

            outputs.append(outputs_item)

        info = Info.from_dict(d.pop("info"))

        created_at = datetime.datetime.fromisoformat(d.pop("created_at"))

        model_read = cls(
            id=id,
            name=name,
            format_=format_,
            filename=filename,
            size_bytes=size_bytes,
            sha256=sha256,
            num_parameters=num_parameters,
            inputs=inputs,
            outputs=outputs,
            info=info,
            created_at=created_at,
        )

        model_read.additional_properties = d
        return model_read

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
