"""Jobs: submit a pipeline, poll it, list, cancel."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import bindparam, select

from app.api.conditional import ETAG_HEADER, JOB_BODIES, NOT_MODIFIED_RESPONSE, etag_matches
from app.api.deps import SessionDep, TenantDep
from app.api.pagination import page_of, paginate
from app.api.problems import ProblemError
from app.core.db import get_sessionmaker
from app.core.reads import read_rows
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


# The polled routes are coroutines that read job rows with Core statements awaited on the event loop
# (`app.core.reads`) and send bodies serialised once per job version (`JOB_BODIES`); only a body not cached yet is
# read whole, by an ORM session in the threadpool. They take no `SessionDep`: FastAPI enters and leaves a generator
# dependency in two more threadpool hops, which cost more than such a poll (`make bench-load`).
JOB_STATE = select(Job.tenant, Job.version, Job.metrics).where(Job.id == bindparam("job_id"))


def read_job_bodies(url_for: UrlFor, rows: Sequence[tuple[str, int, Any]]) -> tuple[list[str], list[bytes]]:
    """The tags and serialised bodies of jobs given as (id, version, metrics) rows, in order, read whole (with
    artifacts and benchmarks, in three queries for all of them), serialised and cached. A job deleted meanwhile is
    left out; each is tagged by what was read now, which a concurrent change may have moved past `rows`."""
    prefix = url_for("")
    parts: list[str] = []
    bodies: list[bytes] = []
    with get_sessionmaker()() as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_([row[0] for row in rows]))
                                                        .options(*WITHOUT_CHILDREN))}
        load_children(session, list(jobs.values()))
        for job_id, _, _ in rows:
            job = jobs.get(job_id)
            if job is None:
                continue
            part = job_etag_part(job.id, job.version, job.metrics)
            body = job_view(job, url_for).model_dump_json().encode()
            JOB_BODIES.put((part, prefix), body)
            parts.append(part)
            bodies.append(body)
    return parts, bodies


async def job_bodies(request: Request, rows: Sequence[tuple[str, int, Any]], parts: list[str]
                     ) -> tuple[list[str], list[bytes]]:
    """The tags and bodies of jobs given as (id, version, metrics) rows with their tags `parts`: from the cache
    when every one is there, else all read whole now."""
    url_for = download_url_for(request)
    prefix = url_for("")
    cached = [JOB_BODIES.get((part, prefix)) for part in parts]
    if all(body is not None for body in cached):
        return parts, [body for body in cached if body is not None]
    return await run_in_threadpool(read_job_bodies, url_for, rows)


@router.get("", response_model=Page[JobRead], responses=POLL_RESPONSES)
async def list_jobs(
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
    rows, next_cursor = page_of(list(await read_rows(paginate(query, Job, limit, cursor))), limit)
    parts = [job_etag_part(row.id, row.version, row.metrics) for row in rows]
    etag = jobs_page_etag(parts, next_cursor)
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    parts, bodies = await job_bodies(request, [(row.id, row.version, row.metrics) for row in rows], parts)
    # The page as Page[JobRead] would serialise it, from the jobs' serialised bodies, tagged by what is sent.
    content = b'{"items":[' + b",".join(bodies) + b'],"next_cursor":' + json.dumps(next_cursor).encode() + b"}"
    return json_body(content, jobs_page_etag(parts, next_cursor))


@router.get("/{job_id}", response_model=JobRead, responses=POLL_RESPONSES)
async def read_job(
    job_id: str, request: Request, tenant: TenantDep, if_none_match: Annotated[str | None, Header()] = None
) -> Response:
    """A job with its progress, artifacts and benchmarks; `If-None-Match` with its `ETag` answers 304 while the
    job did not change."""
    rows = await read_rows(JOB_STATE, {"job_id": job_id})
    if not rows or rows[0].tenant != tenant:
        raise ProblemError(404, f"no job {job_id}", code="not_found")
    row = rows[0]
    part = job_etag_part(job_id, row.version, row.metrics)
    if etag_matches(if_none_match, etag_of(part)):
        return Response(status_code=304, headers={"ETag": etag_of(part)})
    parts, bodies = await job_bodies(request, [(job_id, row.version, row.metrics)], [part])
    if not bodies:  # deleted between the two reads
        raise ProblemError(404, f"no job {job_id}", code="not_found")
    return json_body(bodies[0], etag_of(parts[0]))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobRead, operation_id="cancel_job")
def cancel(job_id: str, request: Request, session: SessionDep, tenant: TenantDep) -> JobRead:
    """Cancel: a queued job never starts; a running one is stopped by its worker and ends `cancelled`."""
    job = cancel_job(session, get_job_or_404(session, tenant, job_id))
    return to_read(request, job)
