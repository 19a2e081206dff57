from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

if TYPE_CHECKING:
    from ..models.metrics import Metrics


T = TypeVar("T", bound="BenchmarkRead")


@_attrs_define
class BenchmarkRead:
    """
    Attributes:
        id (str):
        job_id (str):
        artifact_id (None | str): Null for the uploaded original.
        device (str):
        size_bytes (int):
        num_parameters (int):
        sparsity (float):
        latency_ms_p50 (float | None):
        latency_ms_p95 (float | None):
        throughput_per_s (float | None):
        peak_memory_bytes (int | None):
        metrics (Metrics):
    """

    id: str
    job_id: str
    artifact_id: None | str
    device: str
    size_bytes: int
    num_parameters: int
    sparsity: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    throughput_per_s: float | None
    peak_memory_bytes: int | None
    metrics: Metrics
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        id = self.id

        job_id = self.job_id

        artifact_id: None | str
        artifact_id = self.artifact_id

        device = self.device

        size_bytes = self.size_bytes

        num_parameters = self.num_parameters

        sparsity = self.sparsity

        latency_ms_p50: float | None
        latency_ms_p50 = self.latency_ms_p50

        latency_ms_p95: float | None
        latency_ms_p95 = self.latency_ms_p95

        throughput_per_s: float | None
        throughput_per_s = self.throughput_per_s

        peak_memory_bytes: int | None
        peak_memory_bytes = self.peak_memory_bytes

        metrics = self.metrics.to_dict()

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "id": id,
                "job_id": job_id,
                "artifact_id": artifact_id,
                "device": device,
                "size_bytes": size_bytes,
                "num_parameters": num_parameters,
                "sparsity": sparsity,
                "latency_ms_p50": latency_ms_p50,
                "latency_ms_p95": latency_ms_p95,
                "throughput_per_s": throughput_per_s,
                "peak_memory_bytes": peak_memory_bytes,
                "metrics": metrics,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.metrics import Metrics  # noqa: PLC0415

        d = dict(src_dict)
        id = d.pop("id")

        job_id = d.pop("job_id")

        def _parse_artifact_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        artifact_id = _parse_artifact_id(d.pop("artifact_id"))

        device = d.pop("device")

        size_bytes = d.pop("size_bytes")

        num_parameters = d.pop("num_parameters")

        sparsity = d.pop("sparsity")

        def _parse_latency_ms_p50(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        latency_ms_p50 = _parse_latency_ms_p50(d.pop("latency_ms_p50"))

        def _parse_latency_ms_p95(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        latency_ms_p95 = _parse_latency_ms_p95(d.pop("latency_ms_p95"))

        def _parse_throughput_per_s(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        throughput_per_s = _parse_throughput_per_s(d.pop("throughput_per_s"))

        def _parse_peak_memory_bytes(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        peak_memory_bytes = _parse_peak_memory_bytes(d.pop("peak_memory_bytes"))

        metrics = Metrics.from_dict(d.pop("metrics"))

        benchmark_read = cls(
            id=id,
            job_id=job_id,
            artifact_id=artifact_id,
            device=device,
            size_bytes=size_bytes,
            num_parameters=num_parameters,
            sparsity=sparsity,
            latency_ms_p50=latency_ms_p50,
            latency_ms_p95=latency_ms_p95,
            throughput_per_s=throughput_per_s,
            peak_memory_bytes=peak_memory_bytes,
            metrics=metrics,
        )

        benchmark_read.additional_properties = d
        return benchmark_read

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
