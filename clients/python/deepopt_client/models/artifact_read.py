from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.artifact_read_kind import ArtifactReadKind

T = TypeVar("T", bound="ArtifactRead")


@_attrs_define
class ArtifactRead:
    """
    Attributes:
        id (str):
        job_id (str):
        kind (ArtifactReadKind):
        format_ (str):
        filename (str):
        size_bytes (int):
        sha256 (str):
        download_url (str):
    """

    id: str
    job_id: str
    kind: ArtifactReadKind
    format_: str
    filename: str
    size_bytes: int
    sha256: str
    download_url: str
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        id = self.id

        job_id = self.job_id

        kind = self.kind.value

        format_ = self.format_

        filename = self.filename

        size_bytes = self.size_bytes

        sha256 = self.sha256

        download_url = self.download_url

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "id": id,
                "job_id": job_id,
                "kind": kind,
                "format": format_,
                "filename": filename,
                "size_bytes": size_bytes,
                "sha256": sha256,
                "download_url": download_url,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        id = d.pop("id")

        job_id = d.pop("job_id")

        kind = ArtifactReadKind(d.pop("kind"))

        format_ = d.pop("format")

        filename = d.pop("filename")

        size_bytes = d.pop("size_bytes")

        sha256 = d.pop("sha256")

        download_url = d.pop("download_url")

        artifact_read = cls(
            id=id,
            job_id=job_id,
            kind=kind,
            format_=format_,
            filename=filename,
            size_bytes=size_bytes,
            sha256=sha256,
            download_url=download_url,
        )

        artifact_read.additional_properties = d
        return artifact_read

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
