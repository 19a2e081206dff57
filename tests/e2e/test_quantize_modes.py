"""Quantization modes through the live service (uvicorn + a Celery worker, embedded backend): the digits MLP is
uploaded as ONNX with a calibration and an eval dataset, a static int8 job (calibrated) and a weight-only int4 job
run, and their downloaded artifacts are run in ONNX Runtime here against the fp32 original."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

from tests.conftest import LiveService
from tests.e2e.test_flow import TERMINAL, onnx_accuracy, upload, wait_for

JOBS = {
    "static": ([{"type": "quantize", "mode": "static", "calibration": "percentile", "per_channel": True,
                 "accuracy_guard": {"max_drop": 0.01, "metric": "accuracy"}}], 0.37, "QuantizeLinear"),
    "weight_only": ([{"type": "quantize", "mode": "weight_only", "weight_dtype": "int4", "block_size": 32}], 0.22,
                    "MatMulNBits"),
}  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)
def test_static_and_int4_jobs_give_onnx_models_that_keep_accuracy(live: LiveService, digits: Any) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        model = upload(client, digits.onnx)
        eval_set = upload(client, digits.eval_npz, "/v1/datasets")
        calibration = upload(client, digits.calibration_npz, "/v1/datasets")
        ids = {}
        for name, (passes, _, _) in JOBS.items():
            body = {"model_id": model["id"], "passes": passes, "eval_dataset_id": eval_set["id"],
                    "calibration_dataset_id": calibration["id"], "benchmark": {"batch_sizes": [1], "runs": 10}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]

        for name, (_, max_size, op_type) in JOBS.items():
            job = wait_for(client, ids[name], TERMINAL)
            assert job["status"] == "succeeded", (job, live.log("worker-0"))
            (artifact,) = [a for a in job["artifacts"] if a["kind"] == "model"]
            content = client.get(artifact["download_url"]).content
            assert hashlib.sha256(content).hexdigest() == artifact["sha256"]
            assert len(content) <= max_size * model["size_bytes"]

            # The downloaded bytes, in ONNX Runtime's CPU provider, against the fp32 original on held-out rows.
            accuracy = onnx_accuracy(content, digits.test_inputs, digits.test_labels)
            assert accuracy >= digits.test_accuracy - 0.02, (name, accuracy, digits.test_accuracy)
            ops = {n.op_type for n in onnx.load_from_string(content).graph.node}
            assert op_type in ops, ops
            import onnxruntime as ort

            session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
            reference = ort.InferenceSession(str(digits.onnx), providers=["CPUExecutionProvider"])
            x = digits.test_inputs[:64]
            ours, theirs = session.run(None, {"input": x})[0], reference.run(None, {"input": x})[0]
            cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
            assert cosine.mean() >= 0.995, cosine.mean()

            (decision,) = [d for d in job["decisions"] if d["type"] == "quantize"]
            assert decision["mode"] == name and decision["verification"]["runs_on_cpu"] is True
            assert decision["quantized_nodes"] >= 3 and decision["preprocess"]["pre_process"] == "ok"
            by_artifact = {b["artifact_id"]: b for b in job["benchmarks"]}
            assert by_artifact[artifact["id"]]["metrics"]["accuracy"] >= by_artifact[None]["metrics"]["accuracy"] - 0.02
            (note,) = by_artifact[artifact["id"]]["metrics"]["quantization"]
            assert note["mode"] == name
            if name == "static":
                guard = decision["guard"]
                assert guard["within_max_drop"] is True and guard["metric_float"] - guard["metric_quantized"] <= 0.01
                assert note["guard"]["within_max_drop"] is True
            else:
                assert decision["settings"]["algorithm"] == "awq_clip" and decision["settings"]["bits"] == 4
