"""Trials of `auto` jobs as rows: any worker may run one, the job's own worker included.

Why rows: the job row is the truth about a job and a trial row is the truth about a trial. A trial is claimed
with `UPDATE trial SET status='running' ... WHERE status='pending' AND <its job still runs under the worker that
dispatched it>`, so a duplicate or late `run_trial` delivery finds nothing to claim, and the job's own worker
claims pending trials the same way (:mod:`worker.dispatch`): with a single worker of concurrency 1, busy with the
job itself, no trial waits for a free worker that never comes.

A trial another worker claims runs there in a child process (`python -m deepopt_core.cli trial`) on the bundle
fetched from storage, heartbeating its row; its model goes back through storage, its measurement into the row.
It stops within a heartbeat when its row is taken away (cancelled, or requeued because it looked dead) or when
its job no longer runs under the trial's owner. The reaper cancels trials left behind by owners that died.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, exists, or_, select, update

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.db.models import Job, Trial, utcnow
from app.storage import copy_to, make_storage
from deepopt_core.sandbox import child_output
from worker.executor import _stop, sandboxed, worker_identity

log = logging.getLogger("deepopt.trials")
ACTIVE = ("pending", "running")


def worker_name(worker_id: str | None) -> str | None:
    """`host:pid` of a per-run identity `host:pid:nonce` (what decisions and reports show)."""
    return worker_id.rsplit(":", 1)[0] if worker_id and worker_id.count(":") >= 2 else worker_id


def owned() -> ColumnElement[bool]:
    """The trial's job still runs under the worker that dispatched the trial, and no cancel was asked for."""
    return exists().where(Job.id == Trial.job_id, Job.status == "running", Job.worker_id == Trial.owner_id,
                          Job.cancel_requested.is_(False))


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


def execute_trial(trial_id: str) -> str:
    """Claim and run trial `trial_id` here. Returns skipped, succeeded, failed or cancelled."""
    settings = get_settings()
    worker_id = worker_identity()
    if not claim_trial(trial_id, worker_id):
        log.info("trial %s: nothing to claim (done, taken, or its job ended)", trial_id)
        return "skipped"
    with session_scope() as session:
        trial = session.get(Trial, trial_id)
        assert trial is not None
        session.expunge(trial)
    folder = settings.work_dir / "trials" / trial_id
    shutil.rmtree(folder, ignore_errors=True)
    try:
        storage = make_storage(settings)
        bundle = folder / "bundle"
        bundle.mkdir(parents=True)
        for name, key in trial.bundle.items():
            copy_to(storage, key, bundle / Path(name).name)
        request = {"bundle": str(bundle), "number": trial.number, "recipe": trial.recipe,
                   "workdir": str(folder / "out"), "worker": worker_name(worker_id)}
        (folder / "request.json").write_text(json.dumps(request))
        outcome = _run_trial_child(trial_id, worker_id, folder, settings)
        if outcome != "done":
            return outcome
        out = folder / "out"
        answer = json.loads(child_output(out / "trial.json", out).read_text())
        if answer["status"] != "succeeded":
            finish_trial(trial_id, worker_id, status="failed", error=str(answer.get("error"))[:4000],
                         seconds=answer.get("seconds"))
            return "failed"
        stored = storage.put_file(child_output(out / "trial.onnx", out))
        done = finish_trial(trial_id, worker_id, status="succeeded", result=answer["measurement"],
                            model_key=stored.key, seconds=answer.get("seconds"))
        return "succeeded" if done else "cancelled"
    except Exception as exc:
        log.exception("trial %s failed in the worker", trial_id)
        finish_trial(trial_id, worker_id, status="failed", error=f"{type(exc).__name__}: {exc}"[:4000])
        return "failed"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_trial_child(trial_id: str, worker_id: str, folder: Path, settings: Settings) -> str:
    """Run the trial's child process, heartbeating the row; "done" when it ended on its own."""
    stderr_path = folder / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(stdout=subprocess.DEVNULL, stderr=stderr,
                                 **sandboxed(["trial", str(folder / "request.json")], folder, settings))
        started = next_beat = time.monotonic()
        try:
            while child.poll() is None:
                time.sleep(0.1)
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + settings.heartbeat_interval_s
                    try:
                        ours = beat_trial(trial_id, worker_id)
                    except Exception:  # the database may be restarting; try again at the next beat
                        log.exception("trial %s: heartbeat failed", trial_id)
                        ours = True
                    if not ours:
                        log.info("trial %s: no longer ours (cancelled, requeued or its job ended); stopping", trial_id)
                        _stop(child)
                        finish_trial(trial_id, worker_id, status="cancelled")
                        return "cancelled"
                if now - started > settings.job_timeout_s:
                    _stop(child)
                    finish_trial(trial_id, worker_id, status="failed", error=f"the trial ran longer than "
                                 f"{settings.job_timeout_s:.0f} s")
                    return "failed"
        finally:
            if child.poll() is None:
                _stop(child)
    if child.returncode == 0 and (folder / "out" / "trial.json").exists():
        return "done"
    tail = stderr_path.read_text(errors="replace")[-1500:] if stderr_path.exists() else ""
    finish_trial(trial_id, worker_id, status="failed",
                 error=f"the trial process ended with exit status {child.returncode}: {tail.strip()}"[:4000])
    return "failed"


def job_trials(job_id: str, attempt: int) -> list[Trial]:
    with session_scope() as session:
        rows = list(session.scalars(select(Trial).where(Trial.job_id == job_id, Trial.attempt == attempt)
                                    .order_by(Trial.number)))
        session.expunge_all()
        return rows
