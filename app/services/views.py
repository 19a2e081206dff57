"""Rows -> response bodies, shared by the routes, the event stream and the webhooks sent by workers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from app.db.models import Artifact, Job
from app.schemas import ArtifactRead, BenchmarkRead, JobError, JobRead

UrlFor = Callable[[str], str]


def relative_download_url(artifact_id: str) -> str:
    return f"/v1/artifacts/{artifact_id}/content"


def artifact_view(artifact: Artifact, download_url: UrlFor = relative_download_url) -> ArtifactRead:
    return ArtifactRead(
        id=artifact.id, job_id=artifact.job_id, kind=artifact.kind, format=artifact.format,  # type: ignore[arg-type]
        filename=artifact.filename, size_bytes=artifact.size_bytes, sha256=artifact.sha256,
        download_url=download_url(artifact.id),
    )


def job_view(job: Job, download_url: UrlFor = relative_download_url) -> JobRead:
    return JobRead(
        id=job.id, status=job.status, progress=min(max(job.progress, 0.0), 1.0), stage=job.stage,  # type: ignore[arg-type]
        metrics=job.metrics, model_id=job.model_id, spec=job.spec,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        attempts=job.attempts, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        artifacts=[artifact_view(a, download_url) for a in job.artifacts],
        benchmarks=[
            BenchmarkRead(
                id=b.id, job_id=b.job_id, artifact_id=b.artifact_id, device=b.device, size_bytes=b.size_bytes,
                num_parameters=b.num_parameters, sparsity=b.sparsity, latency_ms_p50=b.latency_ms_p50,
                latency_ms_p95=b.latency_ms_p95, throughput_per_s=b.throughput_per_s,
                peak_memory_bytes=b.peak_memory_bytes, metrics=b.metrics,
            )
            for b in job.benchmarks
        ],
        decisions=(job.result_info or {}).get("decisions", []),
        warnings=(job.result_info or {}).get("warnings", []),
    )


class JobStateFields(Protocol):
    """A job row's fields that change while it runs: a `Job`, or a row of them read with Core."""

    id: str
    version: int
    status: str
    stage: str | None
    progress: float
    metrics: dict[str, Any] | None
    attempts: int
    error_code: str | None
    error_message: str | None


def job_state(job: JobStateFields) -> dict[str, Any]:
    """What an event-stream `state` event carries: the fields that change while a job runs."""
    return {
        "job_id": job.id, "version": job.version, "status": job.status, "stage": job.stage,
        "progress": round(min(max(job.progress, 0.0), 1.0), 4), "metrics": job.metrics, "attempts": job.attempts,
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
    }


def job_etag_part(job_id: str, version: int, metrics: dict[str, Any] | None) -> str:
    """What identifies the body of a job: its `version`, which every visible change bumps (artifacts, benchmarks
    and the result are written in the transaction that bumps it), and its `metrics`, which a worker's heartbeat
    may change without a bump (a training pass's loss between two progress steps)."""
    if metrics is None:
        return f"{job_id}.{version}"
    digest = hashlib.blake2b(json.dumps(metrics, sort_keys=True, default=str).encode(), digest_size=6)
    return f"{job_id}.{version}.{digest.hexdigest()}"


def etag_of(part: str) -> str:
    """A weak entity tag (RFC 9110): weak, because download URLs in the body follow the request's host."""
    return f'W/"{part}"'


def jobs_page_etag(parts: Sequence[str], next_cursor: str | None) -> str:
    """The tag of a page of jobs: the tags of its jobs, in order, and where the next page starts."""
    digest = hashlib.blake2b(digest_size=12)
    for part in parts:
        digest.update(part.encode() + b"|")
    digest.update((next_cursor or "").encode())
    return etag_of(digest.hexdigest())
