"""Worker isolation: a job runs in a child process under the configured memory and wall-clock limits, and a job
that needs more fails with a reason while the worker stays up for the next job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveService
from tests.e2e.test_flow import PIPELINE, TERMINAL, upload, wait_for


def limited_service(tmp_path: Path, **settings: str) -> Iterator[LiveService]:
    from tests.conftest import _base_env

    env = _base_env(tmp_path / "data")
    env.update(settings)
    service = LiveService(env, tmp_path / "logs")
    service.migrate()
    service.start_api()
    service.start_worker()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[LiveService]:
    # below what importing torch maps
    yield from limited_service(tmp_path, DEEPOPT_JOB_MEMORY_LIMIT_BYTES=str(300 * 1024**2))


@pytest.fixture
def timed(tmp_path: Path) -> Iterator[LiveService]:
    # shorter than starting the optimization process takes (importing torch alone takes longer)
    yield from limited_service(tmp_path, DEEPOPT_JOB_TIMEOUT_S="1.5")


def test_a_job_over_the_memory_limit_fails_with_the_reason(limited: LiveService, digits: Any) -> None:
    with httpx.Client(base_url=limited.url, timeout=60) as client:
        model = upload(client, digits.onnx)
        first = client.post("/v1/jobs", json={"model_id": model["id"], "passes": PIPELINE}).json()["id"]
        job = wait_for(client, first, TERMINAL, timeout=120)
        assert job["status"] == "failed" and job["error"]["code"] == "memory_limit", job["error"]
        assert "DEEPOPT_JOB_MEMORY_LIMIT_BYTES" in job["error"]["message"]
        # The worker survived its child and takes the next job.
        second = client.post("/v1/jobs", json={"model_id": model["id"], "passes": PIPELINE}).json()["id"]
        assert wait_for(client, second, {"running", *TERMINAL}, timeout=60)["status"] in ("running", "failed")
        assert limited.workers[0].poll() is None


def test_a_job_over_the_wall_clock_limit_is_stopped_and_fails(timed: LiveService, digits: Any) -> None:
    import psutil

    with httpx.Client(base_url=timed.url, timeout=60) as client:
        model = upload(client, digits.onnx)
        first = client.post("/v1/jobs", json={"model_id": model["id"], "passes": PIPELINE}).json()["id"]
        job = wait_for(client, first, TERMINAL, timeout=120)
        assert job["status"] == "failed" and job["error"]["code"] == "timeout", job["error"]
        assert "longer than" in job["error"]["message"]
        # The optimization process was stopped with the job, and the worker survived it.
        worker = psutil.Process(timed.workers[0].pid)
        leftovers = [p for p in worker.children(recursive=True) if "deepopt_core.cli" in " ".join(p.cmdline())]
        assert leftovers == []
        second = client.post("/v1/jobs", json={"model_id": model["id"], "passes": PIPELINE}).json()["id"]
        assert wait_for(client, second, {"running", *TERMINAL}, timeout=60)["status"] in ("running", "failed")
        assert timed.workers[0].poll() is None
