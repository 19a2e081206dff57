"""Jobs: submit a pipeline, poll it, list, cancel."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import Connection, bindparam, select

from app.api.conditional import ETAG_HEADER, JOB_BODIES, NOT_MODIFIED_RESPONSE, etag_matches
from app.api.deps import SessionDep, TenantDep
from app.api.pagination import page_of, paginate
from app.api.problems import ProblemError
from app.core.db import autocommit_connection, get_sessionmaker
from app.db.models import Artifact, Job
from app.schemas import ArtifactRead, JobCreate, JobRead, JobStatus, Page
from app.services.jobs import WITHOUT_CHILDREN, cancel_job, create_job, load_children
from app.services.views import (
    UrlFor,
    artifact_view,
    etag_of,
    job_etag_part,
    job_view,
    jobs_page_etag,
    relative_download_url,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
POLL_RESPONSES: dict[int | str, dict[str, object]] = {200: {"headers": ETAG_HEADER}, **NOT_MODIFIED_RESPONSE}


def download_url_for(request: Request) -> UrlFor:
    # What `request.url_for("download_artifact", ...)` gives, without walking every route for every artifact.
    base = str(request.base_url).rstrip("/")
    return lambda artifact_id: base + relative_download_url(artifact_id)


def artifact_read(request: Request, artifact: Artifact) -> ArtifactRead:
    return artifact_view(artifact, download_url_for(request))


def to_read(request: Request, job: Job) -> JobRead:
    return job_view(job, download_url_for(request))


def get_job_or_404(session: SessionDep, tenant: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant != tenant:
        raise ProblemError(404, f"no job {job_id}", code="not_found")
    return job


def json_body(content: bytes, etag: str) -> Response:
    """A body serialised once, by pydantic, and sent as it is: FastAPI would validate a returned model again."""
    return Response(content=content, media_type="application/json", headers={"ETag": etag})


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


# The polled routes read job rows with Core statements on a pooled connection (no ORM session, no transaction)
# and send bodies serialised once per job version (`JOB_BODIES`); an ORM session reads a job only when its body is
# not cached yet. They take no `SessionDep`: FastAPI enters and leaves a generator dependency in two more threadpool
# hops, which cost more than such a poll (`make bench-load`).
JOB_STATE = select(Job.tenant, Job.version, Job.metrics).where(Job.id == bindparam("job_id"))


def job_bodies(connection: Connection, request: Request, rows: Sequence[tuple[str, int, Any]]
               ) -> tuple[list[str], list[bytes]]:
    """The tags and serialised bodies of jobs given as (id, version, metrics) rows, in order: from the cache, or
    read whole (with artifacts and benchmarks, in three queries for all of them) and serialised now."""
    url_for = download_url_for(request)
    prefix = url_for("")
    parts = [job_etag_part(job_id, version, metrics) for job_id, version, metrics in rows]
    bodies = [JOB_BODIES.get((part, prefix)) for part in parts]
    missing = [row[0] for row, body in zip(rows, bodies, strict=True) if body is None]
    if missing:
        with get_sessionmaker()(bind=connection) as session:
            jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(missing))
                                                            .options(*WITHOUT_CHILDREN))}
            load_children(session, list(jobs.values()))
            for index, (job_id, _, _) in enumerate(rows):
                job = jobs.get(job_id)
                if bodies[index] is not None or job is None:
                    continue
                # Tagged by what was read now, which a concurrent change may have moved past `rows`.
                parts[index] = job_etag_part(job.id, job.version, job.metrics)
                body = job_view(job, url_for).model_dump_json().encode()
                JOB_BODIES.put((parts[index], prefix), body)
                bodies[index] = body
    return parts, [body for body in bodies if body is not None]


@router.get("", response_model=Page[JobRead], responses=POLL_RESPONSES)
def list_jobs(
    request: Request,
    tenant: TenantDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """List jobs, newest first, optionally by status; `If-None-Match` with the page's `ETag` answers 304 while
    none of its jobs changed."""
    query = select(Job.id, Job.version, Job.metrics, Job.created_at).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    with autocommit_connection() as connection:
        rows, next_cursor = page_of(list(connection.execute(paginate(query, Job, limit, cursor))), limit)
        parts = [job_etag_part(row.id, row.version, row.metrics) for row in rows]
        etag = jobs_page_etag(parts, next_cursor)
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag})
        parts, bodies = job_bodies(connection, request, [(row.id, row.version, row.metrics) for row in rows])
    # The page as Page[JobRead] would serialise it, from the jobs' serialised bodies (a job deleted meanwhile is
    # left out), tagged by what is sent.
    content = b'{"items":[' + b",".join(bodies) + b'],"next_cursor":' + json.dumps(next_cursor).encode() + b"}"
    return json_body(content, jobs_page_etag(parts, next_cursor))


@router.get("/{job_id}", response_model=JobRead, responses=POLL_RESPONSES)
def read_job(
    job_id: str, request: Request, tenant: TenantDep, if_none_match: Annotated[str | None, Header()] = None
) -> Response:
    """A job with its progress, artifacts and benchmarks; `If-None-Match` with its `ETag` answers 304 while the
    job did not change."""
    with autocommit_connection() as connection:
        row = connection.execute(JOB_STATE, {"job_id": job_id}).one_or_none()
        if row is None or row.tenant != tenant:
            raise ProblemError(404, f"no job {job_id}", code="not_found")
        etag = etag_of(job_etag_part(job_id, row.version, row.metrics))
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag})
        parts, bodies = job_bodies(connection, request, [(job_id, row.version, row.metrics)])
    if not bodies:  # deleted between the two reads
        raise ProblemError(404, f"no job {job_id}", code="not_found")
    return json_body(bodies[0], etag_of(parts[0]))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobRead, operation_id="cancel_job")
def cancel(job_id: str, request: Request, session: SessionDep, tenant: TenantDep) -> JobRead:
    """Cancel: a queued job never starts; a running one is stopped by its worker and ends `cancelled`."""
    job = cancel_job(session, get_job_or_404(session, tenant, job_id))
    return to_read(request, job)
