"""Jobs: submit a pipeline, poll it, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import select

from app.api.deps import SessionDep, TenantDep
from app.api.pagination import page_of, paginate
from app.api.problems import ProblemError
from app.db.models import Job
from app.schemas import ArtifactRead, BenchmarkRead, JobCreate, JobError, JobRead, JobStatus, Page
from app.services.jobs import cancel_job, create_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def artifact_read(request: Request, artifact) -> ArtifactRead:  # type: ignore[no-untyped-def]
    return ArtifactRead(
        id=artifact.id, job_id=artifact.job_id, kind=artifact.kind, format=artifact.format,
        filename=artifact.filename, size_bytes=artifact.size_bytes, sha256=artifact.sha256,
        download_url=str(request.url_for("download_artifact", artifact_id=artifact.id)),
    )


def to_read(request: Request, job: Job) -> JobRead:
    return JobRead(
        id=job.id, status=job.status, progress=min(max(job.progress, 0.0), 1.0), stage=job.stage,  # type: ignore[arg-type]
        model_id=job.model_id, spec=job.spec,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        attempts=job.attempts, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        artifacts=[artifact_read(request, a) for a in job.artifacts],
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


def get_job_or_404(session: SessionDep, tenant: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant != tenant:
        raise ProblemError(404, f"no job {job_id}", code="not_found")
    return job


@router.post("", status_code=202, response_model=JobRead)
def submit_job(
    body: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobRead:
    """Submit a pipeline; it is validated against the model now and runs on a worker."""
    job, created = create_job(session=session, tenant=tenant, body=body, idempotency_key=idempotency_key)
    response.headers["Location"] = str(request.url_for("read_job", job_id=job.id))
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return to_read(request, job)


@router.get("", response_model=Page[JobRead])
def list_jobs(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> Page[JobRead]:
    """List jobs, newest first, optionally by status."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    rows, next_cursor = page_of(list(session.scalars(paginate(query, Job, limit, cursor))), limit)
    return Page[JobRead](items=[to_read(request, j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead)
def read_job(job_id: str, request: Request, session: SessionDep, tenant: TenantDep) -> JobRead:
    """A job with its progress, artifacts and benchmarks."""
    return to_read(request, get_job_or_404(session, tenant, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobRead)
def cancel(job_id: str, request: Request, session: SessionDep, tenant: TenantDep) -> JobRead:
    """Cancel: a queued job never starts; a running one is stopped by its worker and ends `cancelled`."""
    job = cancel_job(session, get_job_or_404(session, tenant, job_id))
    return to_read(request, job)
