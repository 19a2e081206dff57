"""A job through the worker in this process: claimed, run in its sandboxed child with the model and dataset
copied in, its progress on the row, its results persisted, the time of each pass observed for /metrics.

Real store (SQLite), real storage, the real child on the digits MLP; tests/e2e runs it under Celery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.core.config import get_settings
from app.core.db import session_scope
from app.db.models import Dataset, Job, MetricHistogram, Model
from app.services.histograms import JOB_DURATION, PASS_DURATION
from app.storage import make_storage
from deepopt_core.datasets import inspect_dataset
from deepopt_core.formats import inspect_model
from worker.executor import execute_job

pytestmark = [pytest.mark.timeout(300)]
FAST_BENCH = {"batch_sizes": [1], "runs": 3, "warmup": 1, "threads": 1}


def test_a_job_runs_in_its_child_and_its_results_are_persisted(app_env: Path, digits: Any) -> None:
    storage = make_storage(get_settings())
    with session_scope() as session:
        blob = storage.put_file(digits.onnx)
        model = Model(tenant="local", name="digits", format="onnx", filename="digits.onnx", size_bytes=blob.size_bytes,
                      sha256=blob.sha256, storage_key=blob.key,
                      info=inspect_model(digits.onnx, "onnx").model_dump(exclude_none=True))
        data = storage.put_file(digits.eval_npz)
        dataset = Dataset(tenant="local", name="eval", format="npz", filename="eval.npz", size_bytes=data.size_bytes,
                          sha256=data.sha256, storage_key=data.key,
                          info=inspect_dataset(digits.eval_npz).model_dump())
        session.add_all([model, dataset])
        session.flush()
        job = Job(tenant="local", model_id=model.id,
                  spec={"passes": [{"type": "prune", "sparsity": 0.5}], "eval_dataset_id": dataset.id,
                        "benchmark": FAST_BENCH})
        session.add(job)
        session.flush()
        job_id = job.id
    assert execute_job(job_id) == "succeeded"
    assert execute_job(job_id) == "skipped"  # a second delivery finds it done
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.progress, job.stage, job.attempts) == ("succeeded", 1.0, "done", 1)
        assert [a.filename for a in job.artifacts if a.kind == "model"] == ["digits-optimized.onnx"]
        assert len(job.benchmarks) == 2 and "accuracy" in job.benchmarks[1].metrics  # the eval dataset reached it
        observed = {(h.name, h.label): h.count for h in session.scalars(select(MetricHistogram))}
    assert observed[(PASS_DURATION, "prune")] == 1 and observed[(JOB_DURATION, "prune")] == 1
    assert not (get_settings().work_dir / job_id).exists()  # the job's folder went with it
