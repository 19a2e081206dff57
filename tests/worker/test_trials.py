"""Trials of `auto` jobs as rows: a trial runs once however often its task is delivered, a worker that runs one
measures what the job's own process would, and trials whose job went away are never started.

Real store (SQLite here; tests/e2e/test_auto_fanout.py runs the whole flow on PostgreSQL + Redis), real storage,
a real trial process on the digits MLP."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import onnx
import pytest

from app.core.config import get_settings
from app.core.db import session_scope
from app.db.models import Job, Model, Trial, utcnow
from app.storage import make_storage
from deepopt_core.datasets import load_dataset
from deepopt_core.evaluate.inputs import dataset_feed, take
from deepopt_core.formats import inspect_model
from deepopt_core.passes.auto.trials import OnnxTrialRunner
from deepopt_core.passes.context import PassContext
from worker.reaper import reap_once
from worker.trials import execute_trial

pytestmark = [pytest.mark.timeout(120)]
RECIPE = [{"type": "quantize", "mode": "dynamic"}]


@pytest.fixture
def runner(digits: Any, tmp_path: Path) -> OnnxTrialRunner:
    """The in-process runner of the digits MLP, after its baseline (what a job's search holds)."""
    info = inspect_model(digits.onnx, "onnx")
    evaluation = load_dataset(digits.eval_npz)
    sample = take(dataset_feed(info, evaluation, max_rows=2), 0, 2)
    ctx = PassContext(workdir=tmp_path / "job", info=info, sample=sample, eval=evaluation)
    (tmp_path / "job").mkdir()
    runner = OnnxTrialRunner(onnx.load(str(digits.onnx)), ctx, metric="accuracy", batch_size=8, num_samples=256)
    runner.baseline()
    return runner


def dispatch(runner: OnnxTrialRunner, folder: Path, job_status: str = "running") -> str:
    """A job row owned by `owner` and one pending trial of it whose bundle is in storage; returns the trial id."""
    storage = make_storage(get_settings())
    bundle = {p.name: storage.put_file(p).key for p in runner.write_bundle(folder).iterdir()}
    with session_scope() as session:
        model = Model(tenant="local", name="m", format="onnx", filename="m.onnx", size_bytes=1, sha256="0" * 64,
                      storage_key="0" * 64, info={"format": "onnx"})
        session.add(model)
        session.flush()
        job = Job(tenant="local", model_id=model.id, spec={"passes": [{"type": "auto"}]}, status=job_status,
                  worker_id="owner", attempts=1, heartbeat_at=utcnow())
        session.add(job)
        session.flush()
        trial = Trial(job_id=job.id, attempt=1, key="s1-t1", number=1, recipe=RECIPE, bundle=bundle, queue="cpu",
                      owner_id="owner", status="pending")
        session.add(trial)
        session.flush()
        return trial.id


def read(trial_id: str) -> Trial:
    with session_scope() as session:
        trial = session.get(Trial, trial_id)
        assert trial is not None
        session.expunge(trial)
        return trial


def test_a_trial_delivered_twice_runs_once_and_measures_what_the_job_would(
        app_env: Path, runner: OnnxTrialRunner, tmp_path: Path) -> None:
    trial_id = dispatch(runner, tmp_path / "bundle")
    outcomes: list[str] = []
    deliveries = [threading.Thread(target=lambda: outcomes.append(execute_trial(trial_id))) for _ in range(2)]
    for delivery in deliveries:
        delivery.start()
    for delivery in deliveries:
        delivery.join()
    assert sorted(outcomes) == ["skipped", "succeeded"]
    trial = read(trial_id)
    assert trial.status == "succeeded" and trial.claims == 1 and trial.worker_id and trial.result is not None
    assert make_storage(get_settings()).exists(trial.model_key or "")
    assert trial.result["details"]["worker"] == trial.worker_id.rsplit(":", 1)[0]
    # A late redelivery (the broker's, or the reaper's) finds it done.
    assert execute_trial(trial_id) == "skipped" and read(trial_id).claims == 1
    # The bundle reproduces the job's own measurement of the recipe: same rows, same quality, same size.
    here = runner.run(1, RECIPE)
    assert trial.result["quality"] == pytest.approx(here.quality) and trial.result["size_bytes"] == here.size_bytes


def test_trials_of_a_job_that_went_away_never_start_and_are_reaped(
        app_env: Path, runner: OnnxTrialRunner, tmp_path: Path) -> None:
    trial_id = dispatch(runner, tmp_path / "bundle", job_status="cancelled")
    assert execute_trial(trial_id) == "skipped"
    assert read(trial_id).status == "pending"
    assert reap_once()["trials_cancelled"] == 1
    assert read(trial_id).status == "cancelled" and read(trial_id).claims == 0
