"""`auto` trials across workers, on the live service with two Celery workers: the job's trials are run by both
(each trial a row claimed by whichever worker is first, the job's own included), the job finishes when they do
and its model meets the bound on held-out rows; a cancel ends the job and every trial, wherever it runs.

The single-worker case (the job's worker runs every trial itself: no deadlock at concurrency 1) is in
tests/e2e/test_auto.py; a duplicate delivery of a trial task is in tests/worker/test_trials.py."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import LiveService
from tests.e2e.test_flow import TERMINAL, onnx_accuracy, upload, wait_for

pytestmark = [pytest.mark.timeout(240)]


def trial_rows(live: LiveService, job_id: str) -> list[dict[str, Any]]:
    """The job's trial rows, read straight from the deployment's database."""
    url = live.env.get("DEEPOPT_DATABASE_URL") or f"sqlite:///{Path(live.env['DEEPOPT_DATA_DIR']) / 'deepopt.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT key, number, status, worker_id, claims, owner_id FROM trial "
                                           "WHERE job_id = :job ORDER BY number"), {"job": job_id})
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def start_second_worker(live: LiveService, client: httpx.Client) -> None:
    """Start another worker and wait until both heartbeat (the job's worker counts them to size its waves)."""
    live.start_worker()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        beats = re.findall(r'^deepopt_worker_last_heartbeat_timestamp_seconds\{[^}]*worker="([^"]+)"',
                           client.get("/metrics").text, re.M)
        if len(set(beats)) >= 2:
            return
        time.sleep(0.3)
    raise AssertionError(f"the second worker did not start:\n{live.log('worker-1')}")


def submit(client: httpx.Client, digits: Any, folder: Path, passes: list[dict[str, Any]]) -> str:
    half = len(digits.test_inputs) // 2
    search_set = folder / "search.npz"
    np.savez(search_set, input=digits.test_inputs[:half], labels=digits.test_labels[:half])
    model = upload(client, digits.onnx)
    eval_set = upload(client, search_set, "/v1/datasets")
    response = client.post("/v1/jobs", json={"model_id": model["id"], "eval_dataset_id": eval_set["id"],
                                             "passes": passes, "benchmark": {"batch_sizes": [8], "runs": 10}})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_trials_fan_out_across_two_workers(live: LiveService, digits: Any, tmp_path: Path) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        start_second_worker(live, client)
        began = time.monotonic()
        spec = {"type": "auto", "objective": "latency", "max_accuracy_drop": 0.01,
                "budget": {"trials": 6, "minutes": 3}}
        job_id = submit(client, digits, tmp_path, [spec])
        job = wait_for(client, job_id, TERMINAL, timeout=180)
        assert job["status"] == "succeeded", (job, live.log("worker-0"), live.log("worker-1"))
        wall = time.monotonic() - began

        (decision,) = [d for d in job["decisions"] if d["type"] == "auto"]
        ran = [t for t in decision["trials"] if t["status"] in ("measured", "failed")]
        assert 2 <= len(ran) <= 6 and decision["met_bound"] is True
        assert len({t["worker"] for t in ran}) == 2, decision["trials"]  # both workers ran trials
        # The finalists were timed again here, on the job's worker (models of the other's trials came via storage).
        assert any("latency_ms_confirmed" in t for t in ran)

        rows = trial_rows(live, job_id)
        assert len(rows) == len(ran) and all(r["status"] in ("succeeded", "failed") for r in rows)
        assert all(r["claims"] == 1 for r in rows)  # nothing ran twice
        assert {r["worker_id"].rsplit(":", 1)[0] for r in rows} == {t["worker"] for t in ran}

        (artifact,) = [a for a in job["artifacts"] if a["kind"] == "model"]
        content = client.get(artifact["download_url"]).content
        half = len(digits.test_inputs) // 2
        held_out = digits.test_inputs[half:], digits.test_labels[half:]
        assert onnx_accuracy(content, *held_out) >= onnx_accuracy(digits.onnx.read_bytes(), *held_out) - 0.01
        print(f"\nauto on digits with 2 workers: {wall:.1f} s from submit to done, search {decision['seconds']} s; "
              + ", ".join(f"{t['trial']} {t['label']} on {t['worker']} ({t.get('seconds')} s)" for t in ran))


def deepopt_processes(data_dir: str) -> list[str]:
    """Command lines of the optimization processes (job or trial) of this deployment still alive."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "deepopt_core.cli" in command and data_dir in command:
            found.append(command)
    return found


@pytest.mark.parametrize("backend_env", ["postgres_redis"], indirect=True)
def test_cancelling_an_auto_job_stops_its_trials_on_every_worker(live: LiveService, digits: Any,
                                                                  tmp_path: Path) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        start_second_worker(live, client)
        spec = {"type": "auto", "objective": "latency", "budget": {"trials": 500, "minutes": 10}}
        job_id = submit(client, digits, tmp_path, [spec])
        # Wait until the other worker runs one of the job's trials.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = trial_rows(live, job_id)
            if any(r["status"] == "running" and r["worker_id"] != r["owner_id"] for r in rows):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no trial ran on the other worker: {trial_rows(live, job_id)}")
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
        job = wait_for(client, job_id, TERMINAL, timeout=60)
        assert job["status"] == "cancelled" and job["artifacts"] == []

        data_dir = live.env["DEEPOPT_DATA_DIR"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = trial_rows(live, job_id)
            if not any(r["status"] in ("pending", "running") for r in rows) and not deepopt_processes(data_dir):
                break
            time.sleep(0.2)
        assert not any(r["status"] in ("pending", "running") for r in rows), rows
        assert any(r["status"] == "cancelled" for r in rows)
        assert deepopt_processes(data_dir) == []


@pytest.mark.parametrize("backend_env", ["postgres_redis"], indirect=True)
def test_a_trial_whose_worker_dies_runs_again_and_the_job_finishes(live: LiveService, digits: Any,
                                                                   tmp_path: Path) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        start_second_worker(live, client)
        spec = {"type": "auto", "objective": "size", "max_accuracy_drop": 0.01, "budget": {"trials": 6, "minutes": 3}}
        job_id = submit(client, digits, tmp_path, [spec])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = trial_rows(live, job_id)
            remote = [r for r in rows if r["status"] == "running" and r["worker_id"] != r["owner_id"]]
            if remote:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"no trial ran on the other worker: {trial_rows(live, job_id)}")
        # Either worker may have taken the job; kill the other one (and its trial process), mid-trial.
        pid = int(remote[0]["worker_id"].split(":")[1])
        (runner,) = [w for w in live.workers if w.pid == pid]
        live.kill_worker(runner)
        (lost,) = [r for r in trial_rows(live, job_id) if r["key"] == remote[0]["key"]]
        job = wait_for(client, job_id, TERMINAL, timeout=120)
        assert job["status"] == "succeeded", (job, live.log("worker-0"), live.log("worker-1"))
        rows = {r["key"]: r for r in trial_rows(live, job_id)}
        assert all(r["status"] in ("succeeded", "failed") for r in rows.values())
        if lost["status"] == "running":  # killed before it ended: requeued once its heartbeat went stale, run here
            again = rows[lost["key"]]
            assert again["claims"] == 2 and again["worker_id"] == again["owner_id"], again
