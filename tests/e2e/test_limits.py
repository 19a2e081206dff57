"""Worker isolation: a job runs in a child process under the configured memory limit, and a job that needs
more fails with a reason while the worker stays up for the next job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveService
from tests.e2e.test_flow import PIPELINE, TERMINAL, upload, wait_for


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[LiveService]:
    from tests.conftest import _base_env

    env = _base_env(tmp_path / "data")
    env["DEEPOPT_JOB_MEMORY_LIMIT_BYTES"] = str(300 * 1024**2)  # below what importing torch maps
    service = LiveService(env, tmp_path / "logs")
    service.migrate()
    service.start_api()
    service.start_worker()
    try:
        yield service
    finally:
        service.stop()


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
