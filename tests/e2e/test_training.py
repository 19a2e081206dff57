"""The training passes through the live service (uvicorn + a Celery worker, embedded backend), on uploaded models
and uploaded training data: a `distill` job shows its stage, progress and latest loss while it runs and stops
within seconds when cancelled; a short one, with an uploaded student and an uploaded ONNX teacher, gives an ONNX
student far better than chance; a LoRA `finetune` job on a Hugging Face archive and .jsonl text gives an adapter
that PEFT loads and that changes the outputs, and a merged Hugging Face .zip that transformers loads, with the same
function as base + adapter."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveService
from tests.deepopt_core.passes.test_finetune import tiny_bert
from tests.e2e.test_flow import TERMINAL, onnx_accuracy, upload, wait_for

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(120),
              pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)]
BENCH = {"batch_sizes": [1], "runs": 3, "warmup": 1, "threads": 1}


@pytest.fixture(scope="module")
def digits_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.digits import digits_split

    x, y, _, _ = digits_split(0)
    path = tmp_path_factory.mktemp("e2e-train") / "digits_train.npz"
    np.savez(path, input=x, labels=y)
    return path


def small_student(path: Path) -> Path:
    """A fresh 64-24-10 MLP (1,810 parameters) with the digits models' input, as torch.export .pt2."""
    import torch

    from examples.digits import INPUT_NAME

    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(small, (torch.zeros(2, 64),), dynamic_shapes={INPUT_NAME: {0: batch}})
    torch.export.save(program, str(path))
    return path


def watch_training(client: httpx.Client, job_id: str, seen: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Job snapshots while it runs, until `seen` of them carry a training loss in `metrics`, each at a later step."""
    deadline, snapshots = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        metrics = job.get("metrics") or {}
        if job["status"] == "running" and metrics.get("loss") is not None and (
                not snapshots or metrics["step"] > snapshots[-1]["metrics"]["step"]):
            snapshots.append(job)
            if len(snapshots) >= seen:
                return snapshots
        time.sleep(0.2)
    raise AssertionError(f"no training metrics on job {job_id} after {timeout} s: {snapshots}")


def test_distill_job_shows_its_loss_stops_on_cancel_and_trains_a_student(
        live: LiveService, digits: Any, digits_train: Path, tmp_path: Path) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        teacher = upload(client, digits.torch_export)
        train = upload(client, digits_train, "/v1/datasets")
        evaluation = upload(client, digits.eval_npz, "/v1/datasets")
        student = {"width_ratio": 0.5, "init": "random"}

        # A long run: progress, stage and the latest loss are on the job row while it trains; cancel stops it.
        long_job = {"model_id": teacher["id"], "train_dataset_id": train["id"], "outputs": ["onnx"],
                    "passes": [{"type": "distill", "student": student, "steps": 1_000_000, "batch_size": 32}]}
        response = client.post("/v1/jobs", json=long_job)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        snapshots = watch_training(client, job_id, seen=3)
        for job in snapshots:
            metrics = job["metrics"]
            assert job["stage"].startswith("distill ") and " loss " in job["stage"], job["stage"]
            assert 0 < job["progress"] < 1 and metrics["steps"] == 1_000_000 and 0 < metrics["step"] < 1_000_000
            assert isinstance(metrics["loss"], float) and metrics["loss"] >= 0
        asked = time.monotonic()
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        cancelled = wait_for(client, job_id, TERMINAL, timeout=30)
        assert cancelled["status"] == "cancelled" and cancelled["artifacts"] == []
        assert time.monotonic() - asked < 5, time.monotonic() - asked

        # A short run to the end: an uploaded 64-24-10 student, fresh, taught by the ONNX upload of the teacher
        # (run in ONNX Runtime), beats chance (0.1) widely.
        small = upload(client, small_student(tmp_path / "small.pt2"))
        onnx_teacher = upload(client, digits.onnx)
        spec = {"type": "distill", "student": {"model_id": small["id"]}, "teacher": {"model_id": onnx_teacher["id"]},
                "epochs": 6, "batch_size": 64, "lr": 1e-2}
        body = {"model_id": teacher["id"], "train_dataset_id": train["id"], "eval_dataset_id": evaluation["id"],
                "outputs": ["onnx"], "benchmark": BENCH, "passes": [spec]}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], TERMINAL, timeout=90)
        assert job["status"] == "succeeded", (job, live.log("worker-0"))
        (decision,) = [d for d in job["decisions"] if d["type"] == "distill"]
        assert job["metrics"]["step"] == job["metrics"]["steps"] == decision["steps"]
        assert decision["teacher_runtime"] == "onnxruntime" and decision["student"] == small["id"]
        assert decision["student_before"]["accuracy"] < 0.3 and decision["student_after"]["accuracy"] >= 0.85
        (artifact,) = [a for a in job["artifacts"] if a["kind"] == "model"]
        assert artifact["format"] == "onnx"
        content = client.get(artifact["download_url"]).content
        assert onnx_accuracy(content, digits.test_inputs, digits.test_labels) >= 0.85
        by_artifact = {b["artifact_id"]: b for b in job["benchmarks"]}
        assert by_artifact[artifact["id"]]["num_parameters"] == 64 * 24 + 24 + 24 * 10 + 10 == small["num_parameters"]


def test_lora_job_gives_a_peft_adapter_and_a_merged_hf_model(live: LiveService, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    bert = tiny_bert(tmp_path / "bert")
    with httpx.Client(base_url=live.url, timeout=60) as client:
        model = upload(client, bert["model"])
        train = upload(client, bert["train"], "/v1/datasets")
        evaluation = upload(client, bert["eval"], "/v1/datasets")
        spec = {"type": "finetune", "method": "lora", "r": 4, "lr": 0.02, "epochs": 8, "batch_size": 16,
                "target_modules": ["query", "value", "word_embeddings"], "merge": True}
        body = {"model_id": model["id"], "train_dataset_id": train["id"], "eval_dataset_id": evaluation["id"],
                "outputs": ["hf"], "benchmark": BENCH, "passes": [spec]}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], TERMINAL, timeout=90)
        assert job["status"] == "succeeded", (job, live.log("worker-0"))
        (decision,) = [d for d in job["decisions"] if d["type"] == "finetune"]
        assert decision["trainable_parameters"] > 0 and decision["trainable_fraction"] < 0.2
        assert decision["before"]["accuracy"] < 0.5 and decision["after"]["accuracy"] >= 0.9  # chance is 1/3
        assert decision["loss_curve"][-1][1] < decision["loss_curve"][0][1]
        assert job["metrics"]["loss"] >= 0 and job["metrics"]["step"] == job["metrics"]["steps"]

        kinds = {a["kind"]: a for a in job["artifacts"]}
        assert kinds["adapter"]["format"] == "peft" and kinds["model"]["format"] == "hf"
        for kind in ("adapter", "model"):
            archive = tmp_path / f"{kind}.zip"
            archive.write_bytes(client.get(kinds[kind]["download_url"]).content)
            zipfile.ZipFile(archive).extractall(tmp_path / kind)

    (adapter_dir,) = [p.parent for p in (tmp_path / "adapter").rglob("adapter_config.json")]
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    (merged_dir,) = [p.parent for p in (tmp_path / "model").rglob("config.json")]
    rows = [json.loads(line) for line in bert["eval"].read_text().splitlines()]
    labels = np.array([r["label"] for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))  # the tokenizer came along
    batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        merged = AutoModelForSequenceClassification.from_pretrained(str(merged_dir)).eval()
        merged_logits = merged(**batch).logits
        base = AutoModelForSequenceClassification.from_pretrained(str(bert["folder"])).eval()
        base_logits = base(**batch).logits
        adapter_logits = PeftModel.from_pretrained(base, str(adapter_dir)).eval()(**batch).logits
    assert (merged_logits.argmax(-1).numpy() == labels).mean() >= 0.9  # the trained head came along
    assert (adapter_logits - base_logits).abs().max() > 0.1  # the adapter changes the outputs
    torch.testing.assert_close(adapter_logits, merged_logits, atol=1e-4, rtol=1e-4)  # and merges to the same
