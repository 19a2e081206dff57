"""`GET /v1/jobs/{id}/events`: server-sent events of a job's status, stage and progress, then the final job.

The stream re-reads the job row (the truth) every `events_poll_s` and sends a `state` event whenever its
`version` moved; with the Redis broker, workers also publish each change so the stream reads it at once. Every
backend behaves the same, and any API replica can serve any stream.

Events (each `data:` is one line of JSON):
- `event: state`, `id: <version>`: `{"job_id", "version", "status", "stage", "progress", "metrics", "attempts",
  "error"}`;
- `event: job`, `id: <version>-end`: the whole job (as `GET /v1/jobs/{id}`) once it has ended; then the stream
  closes.
A client that reconnects with `Last-Event-ID: <version>` gets only what changed after that version; with the id
of the final event it gets 204 (nothing more will come).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import bindparam, select

from app.api.deps import TenantDep
from app.api.problems import ProblemError
from app.api.routes.jobs import download_url_for
from app.core.config import get_settings
from app.core.db import get_sessionmaker
from app.core.notify import WAKEUPS, wait_for_change
from app.core.reads import read_rows
from app.db.models import TERMINAL_STATUSES, Job
from app.services.jobs import WITHOUT_CHILDREN, load_children
from app.services.views import UrlFor, job_state, job_view

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EVENTS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`: `state` events (id: the job's version) on every change of status, "
        "stage or progress, then one `job` event (id: `<version>-end`) with the final job; then the stream closes.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    204: {"description": "The job had ended and `Last-Event-ID` names its final event: nothing more will come."},
}


def parse_last_event_id(value: str | None) -> tuple[int | None, bool]:
    """`"7"` -> (7, False); `"7-end"` -> (7, True); anything else -> (None, False): send the current state."""
    if not value:
        return None, False
    text = value.strip()
    ended = text.endswith("-end")
    number = text[:-4] if ended else text
    return (int(number), ended) if number.isdigit() else (None, False)


def format_event(event: str, event_id: str, data: Any) -> bytes:
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


# What a stream reads every `events_poll_s`, on the event loop (`app.core.reads`): the fields of a `state` event.
JOB_STREAM_STATE = select(Job.id, Job.tenant, Job.version, Job.status, Job.stage, Job.progress, Job.metrics,
                          Job.attempts, Job.error_code, Job.error_message).where(Job.id == bindparam("job_id"))


def _final(job_id: str, url_for: UrlFor) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The state and the whole job, with its artifacts and benchmarks, read together once it has ended (in the
    threadpool: an ORM session)."""
    with get_sessionmaker()() as session:
        job = session.get(Job, job_id, options=WITHOUT_CHILDREN)
        if job is None:
            return None
        load_children(session, [job])
        return job_state(job), job_view(job, url_for).model_dump(mode="json")


async def _stream(request: Request, job_id: str, after: int | None) -> AsyncIterator[bytes]:
    settings = get_settings()
    url_for = download_url_for(request)
    yield b"retry: 1000\n\n"
    sent = after
    last_write = time.monotonic()
    with WAKEUPS.watch(job_id) as changed:
        while True:
            rows = await read_rows(JOB_STREAM_STATE, {"job_id": job_id})
            if not rows:  # the job row is gone
                return
            state, final = job_state(rows[0]), None
            if rows[0].status in TERMINAL_STATUSES:
                ended = await run_in_threadpool(_final, job_id, url_for)
                if ended is None:
                    return
                state, final = ended
            version = int(state["version"])
            if sent is not None and version < sent:  # an id this job never had (another server's?): start over
                sent = None
            if sent is None or version > sent:
                yield format_event("state", str(version), state)
                sent = version
                last_write = time.monotonic()
            if final is not None:
                yield format_event("job", f"{version}-end", final)
                return
            if time.monotonic() - last_write >= settings.events_keepalive_s:
                yield b": keep-alive\n\n"
                last_write = time.monotonic()
            await wait_for_change(changed, settings.events_poll_s)


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=EVENTS_RESPONSE)
async def job_events(
    job_id: str,
    request: Request,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> Response:
    """Follow a job as server-sent events until it ends; resume with `Last-Event-ID`."""
    rows = await read_rows(JOB_STREAM_STATE, {"job_id": job_id})
    if not rows or rows[0].tenant != tenant:
        raise ProblemError(404, f"no job {job_id}", code="not_found")
    after, ended = parse_last_event_id(last_event_id)
    if ended and rows[0].status in TERMINAL_STATUSES:
        return Response(status_code=204)
    if ended:  # an id of a final event of another run of this job: start over
        after = None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
    return StreamingResponse(_stream(request, job_id, after), media_type="text/event-stream", headers=headers)
