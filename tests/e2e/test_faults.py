"""Faults on the real services of this machine: the broker and the database restart under a running
deployment (PostgreSQL + Redis), and a worker drains on SIGTERM. Jobs end `succeeded`, in bounded time, once.

These tests stop and start this machine's Redis and PostgreSQL (the same commands that started them) and wait
until both answer again before they finish."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveService
from tests.e2e.test_flow import PIPELINE, TERMINAL, check_succeeded_job, upload, wait_for

# These restart the machine's PostgreSQL and Redis, which every other live test uses: `make test` runs them alone.
pytestmark = pytest.mark.serial

# Long enough to restart a service in the middle: about 10 s of timed runs of the digits MLP.
SLOW_BENCHMARK = {"batch_sizes": [1024], "runs": 3000}
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
               "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]


def _wait(check: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(check, capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{check} did not succeed within {timeout} s")


def restart_redis() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], capture_output=True)
    _wait(["bash", "-c", "! redis-cli -h 127.0.0.1 ping"], timeout=20)
    os.makedirs("/var/log/redis", exist_ok=True)
    os.makedirs("/var/lib/redis", exist_ok=True)
    subprocess.run(REDIS_START, check=True, capture_output=True)
    _wait(["redis-cli", "-h", "127.0.0.1", "ping"])


def restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True)
    _wait(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"])


@pytest.fixture
def services_restored() -> Any:
    """Whatever a test does, leave Redis and PostgreSQL running."""
    yield
    if subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True).returncode != 0:
        subprocess.run(REDIS_START, capture_output=True)
        _wait(["redis-cli", "-h", "127.0.0.1", "ping"])
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], capture_output=True).returncode != 0:
        restart_postgres()


def _slow_job(client: httpx.Client, digits: Any) -> tuple[dict[str, Any], str]:
    eval_set = upload(client, digits.eval_npz, "/v1/datasets")
    model = upload(client, digits.onnx)
    body = {"model_id": model["id"], "passes": PIPELINE, "eval_dataset_id": eval_set["id"],
            "benchmark": SLOW_BENCHMARK}
    return model, client.post("/v1/jobs", json=body).json()["id"]


def _wait_for_stage(client: httpx.Client, job_id: str, stage: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["stage"] == stage:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached stage {stage}")


@pytest.mark.parametrize("backend_env", ["postgres_redis"], indirect=True)
def test_database_restart_during_a_job(live: LiveService, digits: Any, services_restored: Any) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        model, job_id = _slow_job(client, digits)
        _wait_for_stage(client, job_id, "benchmark")
        restart_postgres()
        job = wait_for(client, job_id, TERMINAL, timeout=180)
        assert job["attempts"] == 1, job
        check_succeeded_job(client, job, model["size_bytes"], digits)


@pytest.mark.parametrize("backend_env", ["postgres_redis"], indirect=True)
def test_broker_restart_during_a_job_and_while_queued(live: LiveService, digits: Any,
                                                       services_restored: Any) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        model, job_id = _slow_job(client, digits)
        _wait_for_stage(client, job_id, "benchmark")
        restart_redis()
        job = wait_for(client, job_id, TERMINAL, timeout=180)
        check_succeeded_job(client, job, model["size_bytes"], digits)

        # A queued job whose message the restart wipes (Redis here keeps nothing on disk) is re-sent by the
        # reaper once it has waited DEEPOPT_REQUEUE_QUEUED_AFTER_S, and runs on the reconnected worker.
        live.kill_worker(live.workers[0], signal.SIGTERM)
        body = {"model_id": model["id"], "passes": PIPELINE}
        queued = client.post("/v1/jobs", json=body).json()["id"]
        restart_redis()
        live.start_worker()
        job = wait_for(client, queued, TERMINAL, timeout=120)
        assert job["status"] == "succeeded", job


@pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)
def test_worker_drains_on_sigterm(live: LiveService, digits: Any, tmp_path: Path) -> None:
    """SIGTERM to the worker process (as a container stop sends) lets the running job finish first."""
    with httpx.Client(base_url=live.url, timeout=60) as client:
        model, job_id = _slow_job(client, digits)
        _wait_for_stage(client, job_id, "benchmark")
        worker = live.workers[0]
        worker.send_signal(signal.SIGTERM)
        job = wait_for(client, job_id, TERMINAL, timeout=180)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert worker.wait(timeout=60) == 0
