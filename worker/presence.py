"""Worker heartbeats: each worker process keeps a row in `worker` fresh (for /metrics and the container health
check) and deletes it when it stops. `python -m worker.presence` exits 0 when a worker on this host is alive."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from app.core.config import get_settings
from app.core.db import session_scope
from app.db.models import WorkerHeartbeat, utcnow
from worker.identity import worker_name

log = logging.getLogger("deepopt.presence")

CURRENT: dict[str, str | None] = {"job_id": None}


def beat(jobs_done_increment: int = 0) -> None:
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        values: dict[str, Any] = {"heartbeat_at": now, "current_job_id": CURRENT["job_id"]}
        if jobs_done_increment:
            values["jobs_done"] = WorkerHeartbeat.jobs_done + jobs_done_increment
        if not session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.id == worker_name())
                               .values(**values)).rowcount:  # type: ignore[attr-defined]
            session.add(WorkerHeartbeat(
                id=worker_name(), hostname=socket.gethostname()[:255], pid=os.getpid(), queues=settings.queues[:64],
                started_at=now, heartbeat_at=now, current_job_id=CURRENT["job_id"], jobs_done=jobs_done_increment,
            ))


def presence_loop(stop: threading.Event) -> None:
    interval = get_settings().heartbeat_interval_s
    while True:
        try:
            beat()
        except Exception:
            log.exception("worker heartbeat failed; retrying")
        if stop.wait(interval):
            break


def leave() -> None:
    try:
        with session_scope() as session:
            session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == worker_name()))
    except Exception:
        log.exception("could not remove this worker's heartbeat row")


def forget_vanished(older_than_s: float = 24 * 3600.0) -> int:
    """Delete rows of workers silent for a day (killed without a goodbye); the reaper calls this."""
    with session_scope() as session:
        result = session.execute(delete(WorkerHeartbeat).where(
            WorkerHeartbeat.heartbeat_at < utcnow() - timedelta(seconds=older_than_s)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def alive_on_this_host() -> bool:
    settings = get_settings()
    fresh_after = utcnow() - timedelta(seconds=settings.stale_after_s)
    with session_scope() as session:
        return session.scalar(select(WorkerHeartbeat.id).where(
            WorkerHeartbeat.hostname == socket.gethostname()[:255], WorkerHeartbeat.heartbeat_at >= fresh_after
        ).limit(1)) is not None


if __name__ == "__main__":
    sys.exit(0 if alive_on_this_host() else 1)
