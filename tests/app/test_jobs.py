"""Job submission and validation at submit time, idempotency, listing, and cancel of a queued job
(no worker runs here: jobs stay queued on the filesystem broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.app.conftest import npz_bytes
from tests.app.test_models import assert_problem

PIPELINE = [
    {"type": "prune", "method": "magnitude", "sparsity": 0.5},
    {"type": "quantize", "mode": "dynamic", "weight_dtype": "int8"},
]


@pytest.fixture
def model_id(client: httpx.Client, tiny_onnx: Path) -> str:
    return str(client.post("/v1/models", files={"file": ("tiny.onnx", tiny_onnx.read_bytes())}).json()["id"])


@pytest.fixture
def eval_id(client: httpx.Client, tiny_eval_npz: bytes) -> str:
    return str(client.post("/v1/datasets", files={"file": ("eval.npz", tiny_eval_npz)}).json()["id"])


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/jobs", json=body, headers=headers)


def test_submit_queues_a_job(client: httpx.Client, model_id: str, eval_id: str) -> None:
    response = submit(client, {"model_id": model_id, "passes": PIPELINE, "eval_dataset_id": eval_id})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["progress"] == 0 and job["error"] is None
    assert job["spec"]["passes"][0]["scope"] == "global"  # defaults are filled in and stored
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    listed = client.get("/v1/jobs", params={"status": "queued"}).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert client.get("/v1/jobs", params={"status": "running"}).json()["items"] == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"passes": [{"type": "distill-everything"}]}, "passes.0"),
        ({"passes": [{"type": "prune", "method": "magnitude", "sparsity": 1.5}]}, "passes.0.sparsity"),
        ({"passes": [{"type": "prune", "method": "magnitude", "sparsity": 0.5, "colour": "red"}]},
         "passes.0.colour"),
        ({"passes": [{"type": "quantize", "mode": "dynamic", "weight_dtype": "int3"}]}, "passes.0.weight_dtype"),
        ({"passes": []}, "passes"),
        ({"outputs": ["torchscript"]}, "outputs"),
        ({"passes": [{"type": "export"}]}, "passes.0"),
        ({"model_id": "no-such-model"}, "model_id"),
        ({"eval_dataset_id": "no-such-dataset"}, "eval_dataset_id"),
        ({"device": "tpu"}, "device"),
        ({"benchmark": {"batch_sizes": [0]}}, "benchmark.batch_sizes.0"),
    ],
)
def test_bad_jobs_are_422_naming_the_field(client: httpx.Client, model_id: str, change: dict[str, Any],
                                          field: str) -> None:
    body = {"model_id": model_id, "passes": PIPELINE} | change
    problem = assert_problem(submit(client, body), 422, field)
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was created
    assert problem["type"] != "about:blank"


def test_dataset_must_match_model_inputs(client: httpx.Client, model_id: str) -> None:
    wrong = npz_bytes(pixels=np.zeros((8, 4), np.float32))
    dataset_id = client.post("/v1/datasets", files={"file": ("w.npz", wrong)}).json()["id"]
    body = {"model_id": model_id, "passes": PIPELINE, "calibration_dataset_id": dataset_id}
    assert_problem(submit(client, body), 422, "calibration_dataset_id")
    wrong_width = npz_bytes(input=np.zeros((8, 7), np.float32))
    dataset_id = client.post("/v1/datasets", files={"file": ("w.npz", wrong_width)}).json()["id"]
    body = {"model_id": model_id, "passes": PIPELINE, "eval_dataset_id": dataset_id}
    assert_problem(submit(client, body), 422, "eval_dataset_id")


def test_idempotency_key_returns_the_same_job(client: httpx.Client, model_id: str) -> None:
    body = {"model_id": model_id, "passes": PIPELINE}
    first = submit(client, body, **{"Idempotency-Key": "k-1"})
    again = submit(client, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(client.get("/v1/jobs").json()["items"]) == 1
    other = body | {"passes": PIPELINE[:1]}
    assert_problem(submit(client, other, **{"Idempotency-Key": "k-1"}), 422, "Idempotency-Key")
    assert submit(client, body, **{"Idempotency-Key": "k-2"}).json()["id"] != first.json()["id"]


def test_cancel_a_queued_job_and_delete_its_model(client: httpx.Client, model_id: str) -> None:
    job = submit(client, {"model_id": model_id, "passes": PIPELINE}).json()
    assert_problem(client.delete(f"/v1/models/{model_id}"), 409)
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202  # cancelling twice is fine
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert_problem(client.get(f"/v1/models/{model_id}"), 404)
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # history stays


def test_a_queued_job_cancelled_never_runs(client: httpx.Client, model_id: str, app_env: Path) -> None:
    """The worker's claim refuses a cancelled job even though its task is still in the broker."""
    from worker.executor import execute_job

    job = submit(client, {"model_id": model_id, "passes": PIPELINE}).json()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert execute_job(job["id"]) == "skipped"
    after = client.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "cancelled" and after["attempts"] == 0 and after["started_at"] is None


def test_health_ready_metrics_openapi(client: httpx.Client, model_id: str) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and all(ready.json()["checks"].values())
    submit(client, {"model_id": model_id, "passes": PIPELINE})
    metrics = client.get("/metrics").text
    assert 'deepopt_jobs{status="queued"} 1.0' in metrics
    assert 'deepopt_queue_depth{queue="cpu"} 1.0' in metrics
    assert "deepopt_http_requests_total" in metrics
    spec = client.get("/openapi.json").json()
    variants = spec["components"]["schemas"]["JobCreate"]["properties"]["passes"]["items"]["oneOf"]
    assert {v["$ref"].rsplit("/", 1)[-1] for v in variants} >= {
        "DynamicQuantizeConfig", "MagnitudePruneConfig", "ExportConfig"
    }
