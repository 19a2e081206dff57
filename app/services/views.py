"""Rows -> response bodies, shared by the routes, the event stream and the webhooks sent by workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def job_state(job: Job) -> dict[str, Any]:
    """What an event-stream `state` event carries: the fields that change while a job runs."""
    return {
        "job_id": job.id, "version": job.version, "status": job.status, "stage": job.stage,
        "progress": round(min(max(job.progress, 0.0), 1.0), 4), "metrics": job.metrics, "attempts": job.attempts,
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
    }
