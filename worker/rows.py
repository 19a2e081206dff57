"""The job and trial rows as the workers change them: every claim, heartbeat and ending is one conditional UPDATE.

The row is the truth (:mod:`worker.executor`, :mod:`worker.trials`): a job is claimed with ``UPDATE job ... WHERE
status = 'queued'`` (or running with a stale heartbeat) and every later change is guarded by the claiming worker's
identity (:func:`worker.identity.claim_identity`), so a worker the reaper took a job away from never finishes it
twice. A trial of an `auto` job is claimed the same way, and only while its job still runs under the worker that
dispatched it (:func:`owned`), so a duplicate or late `run_trial` delivery finds nothing to claim.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, case, exists, or_, select, update

from app.core.config import Settings
from app.core.db import session_scope
from app.core.notify import notify_job
from app.db.models import Job, Trial, WorkerHeartbeat, utcnow

ACTIVE = ("pending", "running")
Verdict = Literal["ok", "cancel", "lost"]


# -- jobs ------------------------------------------------------------------------------------------------------


def claim(job_id: str, worker_id: str, settings: Settings) -> bool:
    """Take the job if it is queued, or running with a stale heartbeat (its worker died). Atomic."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_s)
    with session_scope() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.cancel_requested.is_(False),
                or_(Job.status == "queued", (Job.status == "running") & (Job.heartbeat_at < stale_before)),
            )
            .values(
                status="running", worker_id=worker_id, heartbeat_at=now, attempts=Job.attempts + 1,
                progress=0.0, stage="starting", metrics=None, error_code=None, error_message=None,
                version=Job.version + 1,
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        session.execute(update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=now))
    notify_job(job_id)
    return True


def finish(job_id: str, worker_id: str, **values: Any) -> bool:
    """Set a terminal status, only while this worker still owns the job."""
    with session_scope() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(finished_at=utcnow(), version=Job.version + 1, **values)
        )
        done = bool(result.rowcount)  # type: ignore[attr-defined]
    if done:
        notify_job(job_id)
    return done


def beat_job(job_id: str, worker_id: str, *, progress: float, stage: str,
             metrics: dict[str, Any] | None) -> Verdict:
    """Refresh the job's heartbeat with how far it got: "lost" when this worker no longer owns it, "cancel" when
    a cancel was asked for."""
    # The version (the id of event-stream events) moves only when something a client sees changed.
    moved = or_(Job.progress != progress, Job.stage.is_distinct_from(stage))
    with session_scope() as session:
        before = session.scalar(select(Job.version).where(Job.id == job_id))
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(heartbeat_at=utcnow(), progress=progress, stage=stage, metrics=metrics,
                    version=Job.version + case((moved, 1), else_=0))
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return "lost"
        cancel, after = session.execute(select(Job.cancel_requested, Job.version).where(Job.id == job_id)).one()
    if after != before:
        notify_job(job_id)
    return "cancel" if cancel else "ok"


def workers_serving(queue: str, *, stale_after_s: float) -> int:
    """How many workers with a fresh heartbeat row serve `queue`."""
    fresh_after = utcnow() - timedelta(seconds=stale_after_s)
    with session_scope() as session:
        queues = session.scalars(select(WorkerHeartbeat.queues).where(WorkerHeartbeat.heartbeat_at >= fresh_after))
        return sum(queue in q.split(",") for q in queues)


# -- trials ----------------------------------------------------------------------------------------------------


def owned() -> ColumnElement[bool]:
    """The trial's job still runs under the worker that dispatched the trial, and no cancel was asked for."""
    return exists().where(Job.id == Trial.job_id, Job.status == "running", Job.worker_id == Trial.owner_id,
                          Job.cancel_requested.is_(False))


def add_trials(rows: list[Trial]) -> list[str]:
    """Insert pending trial rows; returns their ids (committed: a worker that gets their task finds them)."""
    with session_scope() as session:
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def claim_trial(trial_id: str, worker_id: str) -> bool:
    """Take trial `trial_id` if it is pending, its job still owned, and its start deadline not passed. Atomic."""
    now = utcnow()
    with session_scope() as session:
        result = session.execute(
            update(Trial)
            .where(Trial.id == trial_id, Trial.status == "pending",
                   or_(Trial.deadline_at.is_(None), Trial.deadline_at > now), owned())
            .values(status="running", worker_id=worker_id, claims=Trial.claims + 1, heartbeat_at=now,
                    started_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_trial(trial_id: str, worker_id: str, **values: Any) -> bool:
    """Record the end of a trial, only while `worker_id` still holds it."""
    with session_scope() as session:
        result = session.execute(
            update(Trial).where(Trial.id == trial_id, Trial.worker_id == worker_id, Trial.status == "running")
            .values(finished_at=utcnow(), **values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def beat_trial(trial_id: str, worker_id: str) -> bool:
    """Refresh the trial's heartbeat; False when it is no longer ours to run (cancelled, requeued, job gone)."""
    with session_scope() as session:
        result = session.execute(
            update(Trial).where(Trial.id == trial_id, Trial.worker_id == worker_id, Trial.status == "running",
                                owned())
            .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def keep_trial_alive(trial_id: str) -> None:
    """Refresh the heartbeat of a running trial the job's own child runs (its worker beats for it)."""
    with session_scope() as session:
        session.execute(update(Trial).where(Trial.id == trial_id, Trial.status == "running")
                        .values(heartbeat_at=utcnow()))


def set_trial_as_read(row: Trial, expected: str, **values: Any) -> bool:
    """Change the row only if it is still as read (same status, same worker, same number of claims)."""
    with session_scope() as session:
        result = session.execute(
            update(Trial).where(Trial.id == row.id, Trial.status == expected,
                                Trial.worker_id.is_(None) if row.worker_id is None
                                else Trial.worker_id == row.worker_id,
                                Trial.claims == row.claims)
            .values(**values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel_trials(job_id: str, owner_id: str) -> int:
    """Cancel the pending and running trials `owner_id` dispatched for the job (whoever runs one stops within a
    heartbeat). Not the others: a worker that lost the job must not cancel the trials of the one that took it."""
    with session_scope() as session:
        result = session.execute(
            update(Trial).where(Trial.job_id == job_id, Trial.owner_id == owner_id, Trial.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=utcnow())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def cancel_orphan_trials() -> int:
    """Cancel pending and running trials whose job no longer runs under their owner (the reaper calls this)."""
    with session_scope() as session:
        result = session.execute(
            update(Trial).where(Trial.status.in_(ACTIVE), ~owned())
            .values(status="cancelled", finished_at=utcnow()).execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def job_trials(job_id: str, attempt: int) -> list[Trial]:
    """The trial rows of one attempt of a job, in the order they were dispatched (detached)."""
    with session_scope() as session:
        rows = list(session.scalars(select(Trial).where(Trial.job_id == job_id, Trial.attempt == attempt)
                                    .order_by(Trial.number)))
        session.expunge_all()
        return rows


def pending_trials(job_id: str, attempt: int) -> list[tuple[str, str]]:
    """``(id, key)`` of the attempt's pending trials, in order."""
    with session_scope() as session:
        return [(trial_id, key) for trial_id, key in session.execute(
            select(Trial.id, Trial.key).where(Trial.job_id == job_id, Trial.attempt == attempt,
                                              Trial.status == "pending").order_by(Trial.number))]
