"""The whole service, for real: uvicorn, Celery worker processes, and the store and broker of each backend
(embedded SQLite + filesystem broker, and this machine's PostgreSQL + Redis).

A user uploads the digits MLP as ONNX and as TorchScript, submits prune 50% + dynamic int8, polls, downloads
the ONNX artifact, and checks it is at most 0.35x the original's size and keeps held-out accuracy within
2 points, by running the downloaded bytes in ONNX Runtime here."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveService

PIPELINE = [
    {"type": "prune", "method": "magnitude", "sparsity": 0.5, "scope": "global"},
    {"type": "quantize", "mode": "dynamic", "weight_dtype": "int8"},
]
TERMINAL = {"succeeded", "failed", "cancelled"}


def upload(client: httpx.Client, path: Path, endpoint: str = "/v1/models") -> dict[str, Any]:
    with open(path, "rb") as handle:
        response = client.post(endpoint, files={"file": (path.name, handle)})
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")


def onnx_accuracy(model_bytes: bytes, inputs: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: inputs.astype(np.float32)})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def check_succeeded_job(client: httpx.Client, job: dict[str, Any], original_size: int,
                        digits: Any) -> None:
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["error"] is None and job["finished_at"]
    onnx_artifacts = [a for a in job["artifacts"] if a["kind"] == "model" and a["format"] == "onnx"]
    assert len(onnx_artifacts) == 1, job["artifacts"]
    artifact = onnx_artifacts[0]
    assert client.get(f"/v1/artifacts/{artifact['id']}").json() == artifact
    content = client.get(artifact["download_url"])
    assert content.status_code == 200
    assert hashlib.sha256(content.content).hexdigest() == artifact["sha256"] == content.headers["etag"].strip('"')
    assert len(content.content) == artifact["size_bytes"] <= 0.35 * original_size

    accuracy = onnx_accuracy(content.content, digits.test_inputs, digits.test_labels)
    assert accuracy >= digits.test_accuracy - 0.02, (accuracy, digits.test_accuracy)

    by_artifact = {b["artifact_id"]: b for b in job["benchmarks"]}
    assert set(by_artifact) == {None, *(a["id"] for a in job["artifacts"] if a["kind"] == "model")}
    original, optimized = by_artifact[None], by_artifact[artifact["id"]]
    assert original["size_bytes"] == original_size
    assert optimized["size_bytes"] == artifact["size_bytes"]
    assert optimized["sparsity"] >= 0.45 > original["sparsity"]
    for bench in (original, optimized):
        assert bench["latency_ms_p50"] > 0 and bench["latency_ms_p95"] >= bench["latency_ms_p50"]
        assert "accuracy" in bench["metrics"] and bench["num_parameters"] > 0
    assert optimized["metrics"]["fidelity_cosine"] > 0.9
    assert 0 <= optimized["metrics"]["top1_agreement"] <= 1


def test_upload_optimize_download(live: LiveService, digits: Any, tmp_path: Path) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        assert client.get("/readyz").status_code == 200, client.get("/readyz").text
        eval_set = upload(client, digits.eval_npz, "/v1/datasets")
        onnx_model = upload(client, digits.onnx)
        ts_model = upload(client, digits.torchscript)
        assert onnx_model["format"] == "onnx" and ts_model["format"] == "torchscript"

        jobs = {}
        for model, outputs in ((onnx_model, ["onnx"]), (ts_model, ["onnx", "torchscript"])):
            body = {"model_id": model["id"], "passes": PIPELINE, "eval_dataset_id": eval_set["id"],
                    "outputs": outputs, "benchmark": {"batch_sizes": [1, 8], "runs": 20}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            jobs[model["id"]] = response.json()["id"]

        for model in (onnx_model, ts_model):
            job = wait_for(client, jobs[model["id"]], TERMINAL)
            check_succeeded_job(client, job, model["size_bytes"], digits)

        # The TorchScript job also gave a quantized TorchScript model that plain torch loads and runs.
        import torch

        ts_job = client.get(f"/v1/jobs/{jobs[ts_model['id']]}").json()
        (artifact,) = [a for a in ts_job["artifacts"] if a["format"] == "torchscript"]
        path = tmp_path / artifact["filename"]
        path.write_bytes(client.get(artifact["download_url"]).content)
        loaded = torch.jit.load(str(path))
        with torch.no_grad():
            predictions = loaded(torch.from_numpy(digits.test_inputs)).argmax(1).numpy()
        assert (predictions == digits.test_labels).mean() >= digits.test_accuracy - 0.02
        assert 'deepopt_jobs{status="succeeded"} 2.0' in client.get("/metrics").text


def test_worker_killed_mid_job_is_recovered(live: LiveService, digits: Any) -> None:
    """SIGKILL the worker (and its optimization child) while the job runs; another worker's reaper
    requeues the job, which then succeeds once, with one set of artifacts."""
    with httpx.Client(base_url=live.url, timeout=60) as client:
        eval_set = upload(client, digits.eval_npz, "/v1/datasets")
        model = upload(client, digits.onnx)
        body = {"model_id": model["id"], "passes": PIPELINE, "eval_dataset_id": eval_set["id"]}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        running = wait_for(client, job_id, {"running", *TERMINAL}, timeout=120)
        assert running["status"] == "running", running
        live.kill_worker(live.workers[0])
        live.start_worker()
        job = wait_for(client, job_id, TERMINAL, timeout=240)
        assert job["attempts"] == 2, job
        check_succeeded_job(client, job, model["size_bytes"], digits)
        assert len(job["artifacts"]) == len({a["sha256"] for a in job["artifacts"]})


@pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)
def test_cancel_a_running_job_frees_the_worker(live: LiveService, digits: Any) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        eval_set = upload(client, digits.eval_npz, "/v1/datasets")
        model = upload(client, digits.onnx)
        slow = {"model_id": model["id"], "passes": PIPELINE, "eval_dataset_id": eval_set["id"],
                "benchmark": {"batch_sizes": [1, 256], "runs": 10000}}
        job_id = client.post("/v1/jobs", json=slow).json()["id"]
        assert wait_for(client, job_id, {"running", *TERMINAL}, timeout=120)["status"] == "running"
        asked = time.monotonic()
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_for(client, job_id, TERMINAL, timeout=30)
        assert job["status"] == "cancelled" and job["artifacts"] == [] and time.monotonic() - asked < 15

        quick = {"model_id": model["id"], "passes": PIPELINE[:1], "eval_dataset_id": eval_set["id"]}
        follow_up = client.post("/v1/jobs", json=quick).json()["id"]
        assert wait_for(client, follow_up, TERMINAL)["status"] == "succeeded"


@pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)
def test_cuda_jobs_go_to_the_gpu_queue(live: LiveService, digits: Any) -> None:
    """`device: cuda` routes to the gpu queue: the cpu worker leaves it alone, a gpu-queue worker takes it.
    This machine has no GPU, so that worker fails the job with a reason instead of pretending."""
    with httpx.Client(base_url=live.url, timeout=60) as client:
        model = upload(client, digits.onnx)
        body = {"model_id": model["id"], "passes": PIPELINE[:1], "device": "cuda"}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        time.sleep(3)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        assert 'deepopt_queue_depth{queue="gpu"} 1.0' in client.get("/metrics").text
        live.start_worker("gpu")
        job = wait_for(client, job_id, TERMINAL, timeout=120)
        assert job["status"] == "failed" and "CUDA" in job["error"]["message"], job


@pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)
def test_report_and_compare(live: LiveService, digits: Any, tmp_path: Path) -> None:
    """Two recipes on one model: each job's HTML report is self-contained with the plot inline, and the
    compare endpoint puts both next to the original."""
    with httpx.Client(base_url=live.url, timeout=60) as client:
        eval_set = upload(client, digits.eval_npz, "/v1/datasets")
        model = upload(client, digits.onnx)
        ids = []
        for passes in (PIPELINE, PIPELINE[1:]):
            body = {"model_id": model["id"], "passes": passes, "eval_dataset_id": eval_set["id"],
                    "benchmark": {"batch_sizes": [1, 8], "runs": 20, "max_accuracy_drop": 0.01}}
            ids.append(client.post("/v1/jobs", json=body).json()["id"])
        jobs = [wait_for(client, job_id, TERMINAL) for job_id in ids]
        assert all(job["status"] == "succeeded" for job in jobs), jobs
        for job in jobs:
            kinds = sorted((a["kind"], a["format"]) for a in job["artifacts"])
            assert kinds == [("model", "onnx"), ("plot", "png"), ("plot", "svg"), ("report", "json")]
            assert [d["type"] for d in job["decisions"]] == [p["type"] for p in job["spec"]["passes"]]

        report = client.get(f"/v1/jobs/{ids[0]}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        page = report.text
        assert "<svg" in page and "Pareto front" in page and "prune(magnitude, sparsity=0.5)" in page
        assert "fc1" in page  # per-layer sparsity decisions
        import re

        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no external assets
        assert "<script" not in page
        (tmp_path / "report.html").write_text(page)

        table = client.get("/v1/compare", params={"jobs": ",".join(ids)})
        assert table.status_code == 200, table.text
        rows = table.json()["rows"]
        assert [r["job_id"] for r in rows] == [None, *ids]
        assert rows[0]["format"] == "original" and rows[0]["size_ratio"] == 1.0
        assert all(r["size_ratio"] < 0.35 and r["accuracy"] > 0.9 for r in rows[1:])
        assert client.get("/v1/compare", params={"jobs": "nope"}).status_code == 422
