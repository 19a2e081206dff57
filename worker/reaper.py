"""The reaper: the job row is the truth, so lost work is found there, on every broker.

- A running job whose heartbeat stopped (its worker died) is requeued, or failed with a reason after
  `max_attempts` runs, or ends cancelled when a cancel was asked for.
- A trial of an `auto` job whose job no longer runs under the worker that dispatched it (that worker died, or
  the job ended) is cancelled, so no worker starts it and whoever runs it stops.
- A queued job whose task may have been lost (a broker that drops unacked messages of a killed worker, or an
  enqueue that failed) gets its task re-sent. Duplicates are harmless: tasks claim with a conditional UPDATE.
Every worker runs this loop; each change is a conditional UPDATE, so concurrent reapers do not collide.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select, update

from app.core.broker import send_run_job
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.notify import notify_job
from app.db.models import Job, utcnow
from worker.rows import cancel_orphan_trials

log = logging.getLogger("deepopt.reaper")


def reap_once() -> dict[str, int]:
    """One pass over the job table; returns counts of what it did."""
    settings = get_settings()
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_s)
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "resent": 0}
    to_send: list[tuple[str, str]] = []
    changed: list[str] = []
    with session_scope() as session:
        stale = session.execute(
            select(Job.id, Job.attempts, Job.cancel_requested, Job.heartbeat_at, Job.queue).where(
                Job.status == "running", Job.heartbeat_at < stale_before
            )
        ).all()
        for job_id, attempts, cancel_requested, heartbeat_at, queue in stale:
            guard = (Job.id == job_id, Job.status == "running", Job.heartbeat_at == heartbeat_at)
            if cancel_requested:
                values = {"status": "cancelled", "finished_at": now, "stage": "cancelled", "worker_id": None,
                          "version": Job.version + 1}
                key = "cancelled"
            elif attempts >= settings.max_attempts:
                values = {
                    "status": "failed", "finished_at": now, "worker_id": None, "error_code": "worker_lost",
                    "error_message": f"the worker running this job stopped heartbeating {attempts} times; "
                    "giving up (the job may be too large for the workers' memory or time limits)",
                    "version": Job.version + 1,
                }
                key = "failed"
            else:
                values = {"status": "queued", "worker_id": None, "stage": "requeued", "enqueued_at": now,
                          "version": Job.version + 1}
                key = "requeued"
            if session.execute(update(Job).where(*guard).values(**values)).rowcount:  # type: ignore[attr-defined]
                counts[key] += 1
                changed.append(job_id)
                log.warning("job %s: worker lost (heartbeat %s); %s", job_id, heartbeat_at, key)
                if key == "requeued":
                    to_send.append((job_id, queue))

        resend_before = now - timedelta(seconds=settings.requeue_queued_after_s)
        waiting = session.execute(
            select(Job.id, Job.queue, Job.enqueued_at).where(
                Job.status == "queued", Job.enqueued_at < resend_before
            )
        ).all()
        for job_id, queue, enqueued_at in waiting:
            guard = (Job.id == job_id, Job.status == "queued", Job.enqueued_at == enqueued_at)
            if session.execute(update(Job).where(*guard).values(enqueued_at=now)).rowcount:  # type: ignore[attr-defined]
                counts["resent"] += 1
                to_send.append((job_id, queue))
    counts["trials_cancelled"] = cancel_orphan_trials()
    for job_id in changed:
        notify_job(job_id)
    for job_id, queue in to_send:  # after the commit, so a fast worker sees the queued row
        try:
            send_run_job(job_id, queue)
        except Exception:
            log.exception("could not re-send job %s; will retry", job_id)
    return counts


def reaper_loop(stop: threading.Event) -> None:
    interval = get_settings().reaper_interval_s
    passes = 0
    while not stop.wait(interval):
        try:
            reap_once()
            passes += 1
            if passes % 100 == 1:
                from worker.presence import forget_vanished

                forget_vanished()
        except Exception:
            log.exception("reaper pass failed; retrying")
