"""The `auto` pass through the live service (uvicorn + a Celery worker, embedded backend): the digits MLP with a 1%
bound searched on half of the held-out rows, the chosen model checked again on the other half, the budget, the
422 without eval data, the report with its trials, and that report rendered in headless Chromium."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveService, _base_env
from tests.e2e import chromium
from tests.e2e.test_auto_fanout import trial_rows
from tests.e2e.test_flow import TERMINAL, onnx_accuracy, upload, wait_for

pytestmark = [pytest.mark.timeout(240)]
BUDGET = {"trials": 5, "minutes": 2.0}


@dataclass
class AutoRun:
    live: LiveService
    job: dict[str, Any]
    model: dict[str, Any]
    held_out: tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def auto_run(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AutoRun]:
    """One auto job on a live service, shared by the tests of this module (the service stays up for them)."""
    folder = tmp_path_factory.mktemp("auto_e2e")
    live = LiveService(_base_env(folder / "data"), folder / "logs")
    live.migrate()
    live.start_api()
    live.start_worker()
    try:
        half = len(digits.test_inputs) // 2
        search_set = folder / "search.npz"
        np.savez(search_set, input=digits.test_inputs[:half], labels=digits.test_labels[:half])
        with httpx.Client(base_url=live.url, timeout=60) as client:
            model = upload(client, digits.onnx)
            eval_set = upload(client, search_set, "/v1/datasets")
            body = {"model_id": model["id"], "eval_dataset_id": eval_set["id"],
                    "passes": [{"type": "auto", "objective": "size", "max_accuracy_drop": 0.01, "budget": BUDGET}],
                    "benchmark": {"batch_sizes": [1, 8], "runs": 10}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            job = wait_for(client, response.json()["id"], TERMINAL, timeout=180)
            assert job["status"] == "succeeded", (job, live.log("worker-0"))
        yield AutoRun(live, job, model, (digits.test_inputs[half:], digits.test_labels[half:]))
    finally:
        live.stop()


def test_auto_job_meets_the_bound_on_held_out_rows_within_its_budget(auto_run: AutoRun, digits: Any) -> None:
    job = auto_run.job
    (decision,) = [d for d in job["decisions"] if d["type"] == "auto"]
    measured = [t for t in decision["trials"] if t["status"] == "measured"]
    assert decision["trials_run"] == len(measured) <= BUDGET["trials"]
    assert decision["seconds"] <= BUDGET["minutes"] * 60
    assert decision["met_bound"] is True and decision["chosen"] is not None
    assert all(t["drop"] is not None and t["recipe"] and t["seconds"] >= 0 for t in measured)

    with httpx.Client(base_url=auto_run.live.url, timeout=60) as client:
        (artifact,) = [a for a in job["artifacts"] if a["kind"] == "model"]
        content = client.get(artifact["download_url"]).content
        inputs, labels = auto_run.held_out
        original = onnx_accuracy(digits.onnx.read_bytes(), inputs, labels)
        assert onnx_accuracy(content, inputs, labels) >= original - 0.01
        assert len(content) < 0.5 * auto_run.model["size_bytes"]  # objective size: int8/int4 weights

        by_artifact = {b["artifact_id"]: b for b in job["benchmarks"]}
        assert by_artifact[artifact["id"]]["metrics"]["met_bound"] is True
        assert by_artifact[artifact["id"]]["metrics"]["auto"]["chosen_label"] == decision["chosen_label"]

        refused = client.post("/v1/jobs", json={**job["spec"], "eval_dataset_id": None})
        assert refused.status_code == 422
        assert [e["field"] for e in refused.json()["errors"]] == ["passes.0.max_accuracy_drop"]

        page = client.get(f"/v1/jobs/{job['id']}/report").text
        assert decision["chosen_label"] in page and "met_bound" in page and "-auto-trials.svg" in page
        assert page.count("<svg") == 2  # the trade-off plot and the trials plot
        assert all(t["label"] in page for t in decision["trials"])


def test_a_single_worker_of_concurrency_one_runs_every_trial_itself(auto_run: AutoRun) -> None:
    # The one worker is busy with the job; it claims the job's trial rows itself and its job process runs them.
    (decision,) = [d for d in auto_run.job["decisions"] if d["type"] == "auto"]
    ran = [t for t in decision["trials"] if t["status"] in ("measured", "failed")]
    assert len({t["worker"] for t in ran}) == 1
    rows = trial_rows(auto_run.live, auto_run.job["id"])
    assert len(rows) == len(ran) and all(r["worker_id"] == r["owner_id"] and r["claims"] == 1 for r in rows)


def test_report_renders_in_headless_chromium(auto_run: AutoRun, tmp_path: Path) -> None:
    if chromium.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    report = chromium.render(f"{auto_run.live.url}/v1/jobs/{auto_run.job['id']}/report",
                             screenshot=tmp_path / "report.png")
    assert report.errors == []
    assert report.title.startswith("DeepOpt report")
    assert len(report.svgs) == 2
    for svg in report.svgs:
        assert svg["displayed"] and svg["on_top"] and svg["width"] > 300 and svg["height"] > 100, svg
        assert svg["marks"] > 20, svg  # axes, points, labels: a drawn plot, not an empty box


def test_an_auto_job_is_cancelled_mid_search(auto_run: AutoRun) -> None:
    with httpx.Client(base_url=auto_run.live.url, timeout=60) as client:
        spec = {**auto_run.job["spec"], "passes": [{"type": "auto", "budget": {"trials": 500, "minutes": 10}}]}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        deadline = time.monotonic() + 60
        while (job := client.get(f"/v1/jobs/{job_id}").json())["stage"] != "auto" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job["stage"] == "auto", job
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
        job = wait_for(client, job_id, TERMINAL, timeout=60)
        assert job["status"] == "cancelled" and job["artifacts"] == []
