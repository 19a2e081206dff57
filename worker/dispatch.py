"""The job's worker side of `auto` trials on several workers: from the dispatch folder to trial rows and back.

The job's child process writes the waves of its search into a folder (its layout and messages are defined once,
in :mod:`deepopt_core.passes.auto.folder`); the worker, which polls the child anyway to heartbeat the job, turns each
wave into pending trial rows and one `run_trial` task per row, and answers the child as the rows end. Why the
worker and not a task of its own: it already owns the job, its lifetime is the job's, and it can take trials
itself. While the child waits on a wave, the worker claims one pending trial at a time for itself and has the
child run it in process (no copy, no extra process), so a job never waits for a worker that is not there; other
workers' `run_trial` tasks claim the rest. Whoever claims a row runs it; nobody else can. Recipes that train
on the job's train dataset never reach a wave (a bundle carries no train data): the child runs them itself, with
no row (:mod:`deepopt_core.passes.auto.remote`, "Local-only trials").

What keeps a job from hanging on its trials: a claimed trial whose heartbeat goes stale (its worker died) is
requeued, or failed after `max_attempts` claims, and the worker can then run it itself; a pending trial that no
worker started before the search's minutes ran out is skipped; when the job ends, however it ends, its remaining
trials are cancelled and whoever runs one stops within a heartbeat.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.core.broker import send_run_trial
from app.core.config import Settings
from app.db.models import Trial, utcnow
from app.storage import Storage, copy_to
from deepopt_core.passes.auto.folder import TrialAnswer, TrialFolder, TrialMeasurement
from deepopt_core.sandbox import child_output
from worker.identity import name_of, worker_name
from worker.rows import (
    ACTIVE,
    add_trials,
    cancel_trials,
    claim_trial,
    finish_trial,
    job_trials,
    keep_trial_alive,
    pending_trials,
    set_trial_as_read,
    workers_serving,
)

log = logging.getLogger("deepopt.dispatch")
SYNC_S = 0.25  # how often the rows are read while trials are out
CAPACITY_S = 2.0  # how often the count of workers on the queue is refreshed


class TrialDispatcher:
    """Serves one job attempt's dispatch folder; :meth:`poll` is called from the job's heartbeat loop."""

    def __init__(self, *, job_id: str, attempt: int, owner_id: str, queue: str, folder: Path, storage: Storage,
                 settings: Settings):
        self.job_id, self.attempt, self.owner_id, self.queue = job_id, attempt, owner_id, queue
        self.folder, self.storage, self.settings = TrialFolder(folder), storage, settings
        self.bundles: dict[str, dict[str, str]] = {}  # bundle folder name -> file name -> storage key
        self.waves_seen: set[str] = set()
        self.answered: set[str] = set()  # keys the child has an answer for
        self.local: tuple[str, str] | None = None  # (key, trial id) the child runs for this worker now
        self.outstanding = 0  # trials dispatched and not answered yet
        self.next_sync = self.next_capacity = 0.0  # the first poll writes the capacity (the child reads 1 till then)

    def poll(self, now: float) -> None:
        """Take new waves, collect the child's own trials, and (every SYNC_S) read and act on the rows."""
        try:
            self._take_waves()
            self._collect_local()
            if self.outstanding and now >= self.next_sync:
                self.next_sync = now + SYNC_S
                self._sync()
            if now >= self.next_capacity:
                self.next_capacity = now + CAPACITY_S
                self._write_capacity()
        except Exception:  # the database or broker may be restarting; the next poll tries again
            log.exception("job %s: trial dispatch failed; retrying", self.job_id)

    def close(self) -> None:
        """The job ended (or this worker lost it): cancel whatever of its trials has not ended."""
        try:
            cancelled = cancel_trials(self.job_id, self.owner_id)
            if cancelled:
                log.info("job %s: cancelled %d unfinished trials", self.job_id, cancelled)
        except Exception:
            log.exception("job %s: could not cancel its trials (the reaper will)", self.job_id)

    # -- the folder -----------------------------------------------------------------------------------------

    def _write_capacity(self) -> None:
        self.folder.write_capacity(workers_serving(self.queue, stale_after_s=self.settings.stale_after_s))

    def _bundle(self, name: str) -> dict[str, str]:
        if name not in self.bundles:
            # Files the job's child wrote: links and anything outside its folder are never uploaded.
            self.bundles[name] = {path.name: self.storage.put_file(child_output(path, self.folder.root)).key
                                  for path in self.folder.bundle_files(name)}
        return self.bundles[name]

    def _take_waves(self) -> None:
        for name, wave in self.folder.waves(self.waves_seen):
            bundle = self._bundle(wave.bundle)
            now = utcnow()
            deadline = now + timedelta(seconds=wave.deadline_s) if wave.deadline_s is not None else None
            rows = [Trial(job_id=self.job_id, attempt=self.attempt, key=t.key, number=t.number,
                          recipe=t.recipe, bundle=bundle, queue=self.queue, owner_id=self.owner_id,
                          status="pending", deadline_at=deadline, created_at=now) for t in wave.trials]
            ids = add_trials(rows)
            self.waves_seen.add(name)
            self.outstanding += len(ids)
            self.next_sync = 0.0
            for trial_id in ids:  # after the commit, so that a fast worker finds the rows
                try:
                    send_run_trial(trial_id, self.queue)
                except Exception:
                    log.exception("could not send trial %s; this worker will run it", trial_id)
            log.info("job %s: dispatched %d trials", self.job_id, len(ids))

    def _collect_local(self) -> None:
        if self.local is None:
            return
        key, trial_id = self.local
        answer = self.folder.done(key)
        if answer is None:
            return
        values: dict[str, Any] = {"status": answer.status, "seconds": answer.seconds}
        if answer.status == "succeeded" and answer.measurement is not None:
            values["result"] = answer.measurement.model_dump()
        else:
            values["error"] = str(answer.error)[:4000]
        finish_trial(trial_id, self.owner_id, **values)
        self.local = None
        self.answered.add(key)
        self.outstanding -= 1
        self.next_sync = 0.0

    def _answer(self, row: Trial) -> None:
        answer = TrialAnswer(status=row.status, seconds=row.seconds, worker=name_of(row.worker_id),
                             error=row.error)
        if row.status == "succeeded":
            assert row.model_key is not None and row.result is not None
            copy_to(self.storage, row.model_key, self.folder.result_model(row.key))  # before its answer
            answer.measurement = TrialMeasurement.model_validate(row.result)
        self.folder.write_result(row.key, answer)
        self.answered.add(row.key)
        self.outstanding -= 1

    # -- the rows ---------------------------------------------------------------------------------------------

    def _sync(self) -> None:
        now = utcnow()
        stale_before = now - timedelta(seconds=self.settings.stale_after_s)
        local_key = self.local[0] if self.local else None
        for row in job_trials(self.job_id, self.attempt):
            if row.key in self.answered or row.key == local_key:
                continue
            if row.status not in ACTIVE:
                self._answer(row)
            elif row.status == "running" and row.heartbeat_at is not None and row.heartbeat_at < stale_before:
                self._requeue(row)
            elif row.status == "pending" and row.deadline_at is not None and row.deadline_at <= now:
                set_trial_as_read(row, "pending", status="skipped", finished_at=now,
                          error="the search's minutes ran out before a worker started it")
        if self.local is None:
            self._take_one()
        elif local_key is not None:  # the child is running it: keep its row alive
            keep_trial_alive(self.local[1])

    def _take_one(self) -> None:
        """Claim the first pending trial for this worker and hand it to the child."""
        for trial_id, key in pending_trials(self.job_id, self.attempt):
            if claim_trial(trial_id, self.owner_id):
                self.folder.assign(key, worker_name())
                self.local = (key, trial_id)
                return

    def _requeue(self, row: Trial) -> None:
        """A claimed trial whose worker stopped heartbeating: run it again (anyone may), or give up on it."""
        if row.claims >= self.settings.max_attempts:
            set_trial_as_read(row, "running", status="failed", finished_at=utcnow(),
                      error=f"the workers running this trial stopped heartbeating {row.claims} times")
            return
        if set_trial_as_read(row, "running", status="pending", worker_id=None, heartbeat_at=None):
            log.warning("job %s: trial %s lost its worker %s; requeued", self.job_id, row.key, row.worker_id)
            try:
                send_run_trial(row.id, self.queue)
            except Exception:
                log.exception("could not re-send trial %s; this worker will run it", row.id)

