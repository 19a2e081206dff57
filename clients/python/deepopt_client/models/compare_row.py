from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

T = TypeVar("T", bound="CompareRow")


@_attrs_define
class CompareRow:
    """
    Attributes:
        job_id (None | str): Null for the original model.
        artifact_id (None | str):
        format_ (str):
        recipe (str): The job's passes, in order.
        size_bytes (int):
        size_ratio (float): Size against the original's.
        latency_ms_p50 (float | None):
        sparsity (float):
        accuracy (float | None):
        fidelity_cosine (float | None):
        warnings (list[str]):
        speedup (float | None | Unset): Original p50 latency / this p50 latency.
    """

    job_id: None | str
    artifact_id: None | str
    format_: str
    recipe: str
    size_bytes: int
    size_ratio: float
    latency_ms_p50: float | None
    sparsity: float
    accuracy: float | None
    fidelity_cosine: float | None
    warnings: list[str]
    speedup: float | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        job_id: None | str
        job_id = self.job_id

        artifact_id: None | str
        artifact_id = self.artifact_id

        format_ = self.format_

        recipe = self.recipe

        size_bytes = self.size_bytes

        size_ratio = self.size_ratio

        latency_ms_p50: float | None
        latency_ms_p50 = self.latency_ms_p50

        sparsity = self.sparsity

        accuracy: float | None
        accuracy = self.accuracy

        fidelity_cosine: float | None
        fidelity_cosine = self.fidelity_cosine

        warnings = self.warnings

        speedup: float | None | Unset
        if isinstance(self.speedup, Unset):
            speedup = UNSET
        else:
            speedup = self.speedup

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "job_id": job_id,
                "artifact_id": artifact_id,
                "format": format_,
                "recipe": recipe,
                "size_bytes": size_bytes,
                "size_ratio": size_ratio,
                "latency_ms_p50": latency_ms_p50,
                "sparsity": sparsity,
                "accuracy": accuracy,
                "fidelity_cosine": fidelity_cosine,
                "warnings": warnings,
            }
        )
        if speedup is not UNSET:
            field_dict["speedup"] = speedup

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)

        def _parse_job_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        job_id = _parse_job_id(d.pop("job_id"))

        def _parse_artifact_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        artifact_id = _parse_artifact_id(d.pop("artifact_id"))

        format_ = d.pop("format")

        recipe = d.pop("recipe")

        size_bytes = d.pop("size_bytes")

        size_ratio = d.pop("size_ratio")

        def _parse_latency_ms_p50(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        latency_ms_p50 = _parse_latency_ms_p50(d.pop("latency_ms_p50"))

        sparsity = d.pop("sparsity")

        def _parse_accuracy(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        accuracy = _parse_accuracy(d.pop("accuracy"))

        def _parse_fidelity_cosine(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        fidelity_cosine = _parse_fidelity_cosine(d.pop("fidelity_cosine"))

        warnings = cast(list[str], d.pop("warnings"))

        def _parse_speedup(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        speedup = _parse_speedup(d.pop("speedup", UNSET))

        compare_row = cls(
            job_id=job_id,
            artifact_id=artifact_id,
            format_=format_,
            recipe=recipe,
            size_bytes=size_bytes,
            size_ratio=size_ratio,
            latency_ms_p50=latency_ms_p50,
            sparsity=sparsity,
            accuracy=accuracy,
            fidelity_cosine=fidelity_cosine,
            warnings=warnings,
            speedup=speedup,
        )

        compare_row.additional_properties = d
        return compare_row

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
