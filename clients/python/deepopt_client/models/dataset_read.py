from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.dataset_read_format import DatasetReadFormat

if TYPE_CHECKING:
    from ..models.arrays import Arrays


T = TypeVar("T", bound="DatasetRead")


@_attrs_define
class DatasetRead:
    """
    Attributes:
        id (str):
        name (str):
        format_ (DatasetReadFormat):
        filename (str):
        size_bytes (int):
        sha256 (str):
        num_rows (int):
        arrays (Arrays):
        has_labels (bool):
        created_at (datetime.datetime):
    """

    id: str
    name: str
    format_: DatasetReadFormat
    filename: str
    size_bytes: int
    sha256: str
    num_rows: int
    arrays: Arrays
    has_labels: bool
    created_at: datetime.datetime
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        id = self.id

        name = self.name

        format_ = self.format_.value

        filename = self.filename

        size_bytes = self.size_bytes

        sha256 = self.sha256

        num_rows = self.num_rows

        arrays = self.arrays.to_dict()

        has_labels = self.has_labels

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
                "num_rows": num_rows,
                "arrays": arrays,
                "has_labels": has_labels,
                "created_at": created_at,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.arrays import Arrays  # noqa: PLC0415

        d = dict(src_dict)
        id = d.pop("id")

        name = d.pop("name")

        format_ = DatasetReadFormat(d.pop("format"))

        filename = d.pop("filename")

        size_bytes = d.pop("size_bytes")

        sha256 = d.pop("sha256")

        num_rows = d.pop("num_rows")

        arrays = Arrays.from_dict(d.pop("arrays"))

        has_labels = d.pop("has_labels")

        created_at = datetime.datetime.fromisoformat(d.pop("created_at"))

        dataset_read = cls(
            id=id,
            name=name,
            format_=format_,
            filename=filename,
            size_bytes=size_bytes,
            sha256=sha256,
            num_rows=num_rows,
            arrays=arrays,
            has_labels=has_labels,
            created_at=created_at,
        )

        dataset_read.additional_properties = d
        return dataset_read

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
