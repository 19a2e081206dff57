from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.job_read_status import JobReadStatus
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.artifact_read import ArtifactRead
    from ..models.benchmark_read import BenchmarkRead
    from ..models.job_error import JobError
    from ..models.job_read_decisions_item import JobReadDecisionsItem
    from ..models.job_read_metrics_type_0 import JobReadMetricsType0
    from ..models.spec import Spec


T = TypeVar("T", bound="JobRead")


@_attrs_define
class JobRead:
    """
    Attributes:
        id (str):
        status (JobReadStatus):
        progress (float):
        stage (None | str):
        model_id (str):
        spec (Spec):
        error (JobError | None):
        attempts (int):
        created_at (datetime.datetime):
        started_at (datetime.datetime | None):
        finished_at (datetime.datetime | None):
        artifacts (list[ArtifactRead]):
        benchmarks (list[BenchmarkRead]):
        metrics (JobReadMetricsType0 | None | Unset): Latest metrics of a training pass while it runs and after: loss,
            step, steps, epoch.
        decisions (list[JobReadDecisionsItem] | Unset): What each pass decided (per-layer sparsity, quantized nodes,
            ...).
        warnings (list[str] | Unset): What to know before shipping an output.
    """

    id: str
    status: JobReadStatus
    progress: float
    stage: None | str
    model_id: str
    spec: Spec
    error: JobError | None
    attempts: int
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    artifacts: list[ArtifactRead]
    benchmarks: list[BenchmarkRead]
    metrics: JobReadMetricsType0 | None | Unset = UNSET
    decisions: list[JobReadDecisionsItem] | Unset = UNSET
    warnings: list[str] | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.job_error import JobError  # noqa: PLC0415
        from ..models.job_read_metrics_type_0 import JobReadMetricsType0  # noqa: PLC0415

        id = self.id

        status = self.status.value

        progress = self.progress

        stage: None | str
        stage = self.stage

        model_id = self.model_id

        spec = self.spec.to_dict()

        error: dict[str, Any] | None
        if isinstance(self.error, JobError):
            error = self.error.to_dict()
        else:
            error = self.error

        attempts = self.attempts

        created_at = self.created_at.isoformat()

        started_at: None | str
        if isinstance(self.started_at, datetime.datetime):
            started_at = self.started_at.isoformat()
        else:
            started_at = self.started_at

        finished_at: None | str
        if isinstance(self.finished_at, datetime.datetime):
            finished_at = self.finished_at.isoformat()
        else:
            finished_at = self.finished_at

        artifacts = []
        for artifacts_item_data in self.artifacts:
            artifacts_item = artifacts_item_data.to_dict()
            artifacts.append(artifacts_item)

        benchmarks = []
        for benchmarks_item_data in self.benchmarks:
            benchmarks_item = benchmarks_item_data.to_dict()
            benchmarks.append(benchmarks_item)

        metrics: dict[str, Any] | None | Unset
        if isinstance(self.metrics, Unset):
            metrics = UNSET
        elif isinstance(self.metrics, JobReadMetricsType0):
            metrics = self.metrics.to_dict()
        else:
            metrics = self.metrics

        decisions: list[dict[str, Any]] | Unset = UNSET
        if not isinstance(self.decisions, Unset):
            decisions = []
            for decisions_item_data in self.decisions:
                decisions_item = decisions_item_data.to_dict()
                decisions.append(decisions_item)

        warnings: list[str] | Unset = UNSET
        if not isinstance(self.warnings, Unset):
            warnings = self.warnings

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "id": id,
                "status": status,
                "progress": progress,
                "stage": stage,
                "model_id": model_id,
                "spec": spec,
                "error": error,
                "attempts": attempts,
                "created_at": created_at,
                "started_at": started_at,
                "finished_at": finished_at,
                "artifacts": artifacts,
                "benchmarks": benchmarks,
            }
        )
        if metrics is not UNSET:
            field_dict["metrics"] = metrics
        if decisions is not UNSET:
            field_dict["decisions"] = decisions
        if warnings is not UNSET:
            field_dict["warnings"] = warnings

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.artifact_read import ArtifactRead  # noqa: PLC0415
        from ..models.benchmark_read import BenchmarkRead  # noqa: PLC0415
        from ..models.job_error import JobError  # noqa: PLC0415
        from ..models.job_read_decisions_item import JobReadDecisionsItem  # noqa: PLC0415
        from ..models.job_read_metrics_type_0 import JobReadMetricsType0  # noqa: PLC0415
        from ..models.spec import Spec  # noqa: PLC0415

        d = dict(src_dict)
        id = d.pop("id")

        status = JobReadStatus(d.pop("status"))

        progress = d.pop("progress")

        def _parse_stage(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        stage = _parse_stage(d.pop("stage"))

        model_id = d.pop("model_id")

        spec = Spec.from_dict(d.pop("spec"))

        def _parse_error(data: object) -> JobError | None:
            if data is None:
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                error_type_0 = JobError.from_dict(data)

                return error_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(JobError | None, data)

        error = _parse_error(d.pop("error"))

        attempts = d.pop("attempts")

        created_at = datetime.datetime.fromisoformat(d.pop("created_at"))

        def _parse_started_at(data: object) -> datetime.datetime | None:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                started_at_type_0 = datetime.datetime.fromisoformat(data)

                return started_at_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(datetime.datetime | None, data)

        started_at = _parse_started_at(d.pop("started_at"))

        def _parse_finished_at(data: object) -> datetime.datetime | None:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                finished_at_type_0 = datetime.datetime.fromisoformat(data)

                return finished_at_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(datetime.datetime | None, data)

        finished_at = _parse_finished_at(d.pop("finished_at"))

        artifacts = []
        _artifacts = d.pop("artifacts")
        for artifacts_item_data in _artifacts:
            artifacts_item = ArtifactRead.from_dict(artifacts_item_data)

            artifacts.append(artifacts_item)

        benchmarks = []
        _benchmarks = d.pop("benchmarks")
        for benchmarks_item_data in _benchmarks:
            benchmarks_item = BenchmarkRead.from_dict(benchmarks_item_data)

            benchmarks.append(benchmarks_item)

        def _parse_metrics(data: object) -> JobReadMetricsType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                metrics_type_0 = JobReadMetricsType0.from_dict(data)

                return metrics_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(JobReadMetricsType0 | None | Unset, data)

        metrics = _parse_metrics(d.pop("metrics", UNSET))

        _decisions = d.pop("decisions", UNSET)
        decisions: list[JobReadDecisionsItem] | Unset = UNSET
        if _decisions is not UNSET:
            decisions = []
            for decisions_item_data in _decisions:
                decisions_item = JobReadDecisionsItem.from_dict(decisions_item_data)

                decisions.append(decisions_item)

        warnings = cast(list[str], d.pop("warnings", UNSET))

        job_read = cls(
            id=id,
            status=status,
            progress=progress,
            stage=stage,
            model_id=model_id,
            spec=spec,
            error=error,
            attempts=attempts,
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            artifacts=artifacts,
            benchmarks=benchmarks,
            metrics=metrics,
            decisions=decisions,
            warnings=warnings,
        )

        job_read.additional_properties = d
        return job_read

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
