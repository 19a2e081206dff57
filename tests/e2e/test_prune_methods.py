"""Pruning methods through the live service (uvicorn + a Celery worker, embedded backend): the digits MLP is
uploaded as torch.export (.pt2) and as ONNX; a structured job (neurons removed, fine-tuned on the training split,
ONNX output) runs on the .pt2, and an N:M job and an OBS job (the ONNX model converted to torch and exported back)
on the ONNX upload, and the downloaded artifacts are checked here: smaller layers, the 2:4 pattern, the measured
sparsity, the accuracy against the dense original, and the OBS download stored compactly (sparse initializers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import LiveService
from tests.e2e.test_flow import TERMINAL, onnx_accuracy, upload, wait_for


def _weights(content: bytes) -> dict[str, np.ndarray]:
    from deepopt_core.formats.onnx_sparse import densify_onnx

    model = densify_onnx(onnx.load_from_string(content))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight")}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)
def test_structured_nm_and_obs_jobs(live: LiveService, digits: Any, tmp_path: Path) -> None:
    from examples.digits import digits_split

    x_train, y_train, _, _ = digits_split(0)
    train_path = tmp_path / "train.npz"
    np.savez(train_path, input=x_train[:640], labels=y_train[:640])
    bench = {"batch_sizes": [8], "runs": 5}
    with httpx.Client(base_url=live.url, timeout=60) as client:
        pt2, onnx_model = upload(client, digits.torch_export), upload(client, digits.onnx)
        eval_set = upload(client, digits.eval_npz, "/v1/datasets")
        calibration = upload(client, digits.calibration_npz, "/v1/datasets")
        train = upload(client, train_path, "/v1/datasets")
        jobs = {
            "structured": (pt2, [{"type": "prune", "method": "structured", "sparsity": 0.5,
                                  "fine_tune": {"epochs": 3, "lr": 3e-3}}]),
            "nm": (onnx_model, [{"type": "prune", "method": "nm", "n": 2, "m": 4}]),
            "obs": (onnx_model, [{"type": "prune", "method": "obs", "sparsity": 0.85}]),
        }
        ids = {}
        for name, (model, passes) in jobs.items():
            body = {"model_id": model["id"], "passes": passes, "eval_dataset_id": eval_set["id"],
                    "calibration_dataset_id": calibration["id"], "train_dataset_id": train["id"],
                    "outputs": ["onnx"], "benchmark": bench}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]

        results, sizes = {}, {}
        for name in jobs:
            job = wait_for(client, ids[name], TERMINAL)
            assert job["status"] == "succeeded", (job, live.log("worker-0"))
            (artifact,) = [a for a in job["artifacts"] if a["kind"] == "model"]
            content = client.get(artifact["download_url"]).content
            accuracy = onnx_accuracy(content, digits.test_inputs, digits.test_labels)
            assert accuracy >= digits.test_accuracy - 0.03, (name, accuracy, digits.test_accuracy)
            (decision,) = [d for d in job["decisions"] if d["type"] == "prune"]
            by_artifact = {b["artifact_id"]: b for b in job["benchmarks"]}
            results[name] = (decision, _weights(content), by_artifact[artifact["id"]], by_artifact[None])
            sizes[name] = (len(content), artifact["size_bytes"], [d["type"] for d in job["decisions"]])

    decision, weights, pruned, original = results["structured"]
    assert weights["fc1.weight"].shape == (64, 64) and weights["fc2.weight"].shape == (32, 64)
    assert decision["params_before"] == original["num_parameters"] == 17226
    assert decision["params_after"] == pruned["num_parameters"] < 0.5 * 17226

    decision, weights, pruned, _ = results["nm"]
    for name in ("fc1.weight", "fc2.weight"):
        groups = weights[name].reshape(weights[name].shape[0], -1, 4)  # [out, in / 4, 4]
        assert ((groups != 0).sum(-1) <= 2).all()
    assert decision["verification"]["ok"] and decision["pattern"] == "2:4" and decision["layers"]["fc3"] == 0.0
    assert pruned["sparsity"] == pytest.approx(decision["sparsity"], abs=1e-6)

    decision, weights, pruned, _ = results["obs"]
    assert sizes["obs"][2] == ["import", "prune", "export"] and decision["representation"] == "torch"
    assert decision["layers"] == pytest.approx({"fc1": 0.85, "fc2": 0.85, "fc3": 0.0}, abs=1e-3)
    assert (weights["fc1.weight"] == 0).mean() == pytest.approx(0.85, abs=1e-3)
    # The download is the compact file itself (sparse initializers), which ONNX Runtime ran above.
    dense_size = digits.onnx.stat().st_size
    assert sizes["obs"][0] == sizes["obs"][1] == pruned["size_bytes"] < 0.6 * dense_size
    assert pruned["metrics"]["storage"]["layout"] == "sparse_initializers"
    assert pruned["metrics"]["storage"]["stored_bytes"] == sizes["obs"][0]
