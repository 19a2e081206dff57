"""Trials of `auto` jobs as rows: any worker may run one, the job's own worker included.

Why rows: the job row is the truth about a job and a trial row is the truth about a trial. A trial is claimed
with `UPDATE trial SET status='running' ... WHERE status='pending' AND <its job still runs under the worker that
dispatched it>` (:mod:`worker.rows`), so a duplicate or late `run_trial` delivery finds nothing to claim, and the
job's own worker claims pending trials the same way (:mod:`worker.dispatch`): with a single worker of concurrency
1, busy with the job itself, no trial waits for a free worker that never comes.

A trial another worker claims runs there in a child process (`python -m deepopt_core.cli trial`, supervised by
:mod:`worker.child`) on the bundle fetched from storage, heartbeating its row; its model goes back through
storage, its measurement into the row. It stops within a heartbeat when its row is taken away (cancelled, or
requeued because it looked dead) or when its job no longer runs under the trial's owner. The reaper cancels
trials left behind by owners that died.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.db.models import Trial
from app.storage import copy_to, make_storage
from deepopt_core.passes.auto.folder import TrialAnswer
from deepopt_core.protocol import TrialRequest, read_message, write_message
from deepopt_core.sandbox import child_output
from worker.child import supervise
from worker.identity import claim_identity, name_of
from worker.rows import beat_trial, claim_trial, finish_trial

log = logging.getLogger("deepopt.trials")


def execute_trial(trial_id: str) -> str:
    """Claim and run trial `trial_id` here. Returns skipped, succeeded, failed or cancelled."""
    settings = get_settings()
    worker_id = claim_identity()
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
        write_message(folder / "request.json", TrialRequest(
            bundle=bundle, number=trial.number, recipe=trial.recipe, workdir=folder / "out",
            worker=name_of(worker_id)))
        outcome = _run_trial_child(trial_id, worker_id, folder, settings)
        if outcome != "done":
            return outcome
        out = folder / "out"
        answer = read_message(child_output(out / "trial.json", out), TrialAnswer)
        if answer.status != "succeeded" or answer.measurement is None:
            finish_trial(trial_id, worker_id, status="failed", error=str(answer.error)[:4000], seconds=answer.seconds)
            return "failed"
        stored = storage.put_file(child_output(out / "trial.onnx", out))
        done = finish_trial(trial_id, worker_id, status="succeeded", result=answer.measurement.model_dump(),
                            model_key=stored.key, seconds=answer.seconds)
        return "succeeded" if done else "cancelled"
    except Exception as exc:
        log.exception("trial %s failed in the worker", trial_id)
        finish_trial(trial_id, worker_id, status="failed", error=f"{type(exc).__name__}: {exc}"[:4000])
        return "failed"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_trial_child(trial_id: str, worker_id: str, folder: Path, settings: Settings) -> str:
    """Run the trial's child process, heartbeating the row; "done" when it ended on its own."""
    ended = supervise(["trial", str(folder / "request.json")], folder, settings, label=f"trial {trial_id}",
                      beat=lambda _: "ok" if beat_trial(trial_id, worker_id) else "cancel")
    if ended.how in ("cancelled", "lost"):
        log.info("trial %s: no longer ours (cancelled, requeued or its job ended); stopping", trial_id)
        finish_trial(trial_id, worker_id, status="cancelled")
        return "cancelled"
    if ended.finished and (folder / "out" / "trial.json").exists():
        return "done"
    _, message = ended.failure("trial", "trial process")
    finish_trial(trial_id, worker_id, status="failed", error=message[:4000])
    return "failed"
