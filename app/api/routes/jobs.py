"""Jobs: submit a pipeline, poll it, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import select

from app.api.deps import SessionDep, TenantDep
from app.api.pagination import page_of, paginate
from app.api.problems import ProblemError
from app.db.models import Artifact, Job
from app.schemas import ArtifactRead, JobCreate, JobRead, JobStatus, Page
from app.services.jobs import cancel_job, create_job
from app.services.views import UrlFor, artifact_view, job_view

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def download_url_for(request: Request) -> UrlFor:
    return lambda artifact_id: str(request.url_for("download_artifact", artifact_id=artifact_id))


def artifact_read(request: Request, artifact: Artifact) -> ArtifactRead:
    return artifact_view(artifact, download_url_for(request))


def to_read(request: Request, job: Job) -> JobRead:
    return job_view(job, download_url_for(request))


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


@router.post("/{job_id}/cancel", status_code=202, response_model=JobRead, operation_id="cancel_job")
def cancel(job_id: str, request: Request, session: SessionDep, tenant: TenantDep) -> JobRead:
    """Cancel: a queued job never starts; a running one is stopped by its worker and ends `cancelled`."""
    job = cancel_job(session, get_job_or_404(session, tenant, job_id))
    return to_read(request, job)
