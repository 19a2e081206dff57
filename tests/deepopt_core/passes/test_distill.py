"""The `distill` pass trains for real on tiny data: derived, pruned and uploaded students learn from PyTorch and
ONNX teachers, the result is exported to every output, progress shows the loss, a cancel (kill) stops training
within seconds, and bad specs are refused at submit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from deepopt_core.errors import PassFailed
from deepopt_core.passes.base import SubmitContext, check_pass, referenced_models
from deepopt_core.passes.distill.config import DistillConfig
from deepopt_core.pipeline import optimize

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(120),
              pytest.mark.usefixtures("one_torch_thread")]
BENCH = {"batch_sizes": [1], "runs": 2, "warmup": 1, "threads": 1}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def train_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.digits import digits_split

    x, y, _, _ = digits_split(0)
    path = tmp_path_factory.mktemp("kd") / "train.npz"
    np.savez(path, input=x, labels=y)
    return path


def test_width_student_learns_and_is_exported_once(digits, train_npz, tmp_path):
    events: list[tuple[float, str, dict | None]] = []
    spec = {"type": "distill", "student": {"width_ratio": 0.5, "init": "random"}, "epochs": 6, "batch_size": 64,
            "lr": 1e-2}
    result = optimize(digits["torch_export"], [spec], {"train": train_npz, "eval": digits["eval"]},
                      ["torch_export", "onnx"], workdir=tmp_path, benchmark=BENCH,
                      on_progress=lambda f, s, m=None: events.append((f, s, m)))
    first, second = [d for d in result.decisions if d["type"] == "distill"]
    assert first["widths"] == {"fc1": [128, 64], "fc2": [64, 32]} and second["reused_from_track"] == "torch"
    assert first["student_before"]["accuracy"] < 0.3  # a fresh student: about chance (0.1)
    assert first["student_after"]["accuracy"] >= 0.9
    original, *outputs = result.benchmarks
    for bench in outputs:
        assert bench.num_parameters == first["student_parameters"] < 0.4 * original.num_parameters
        assert bench.metrics["accuracy"] >= 0.9 and bench.metrics["top1_agreement"] >= 0.9
    metrics = [m for _, _, m in events if m]
    assert metrics and metrics[-1]["step"] == metrics[-1]["steps"] == first["steps"]
    assert any(s.startswith("distill ") and " loss " in s for _, s, _ in events)


def test_pruned_student_keeps_its_zeros(digits, train_npz, tmp_path):
    passes = [{"type": "prune", "sparsity": 0.7}, {"type": "distill", "epochs": 3, "batch_size": 64}]
    result = optimize(digits["torch_export"], passes, {"train": train_npz, "eval": digits["eval"]}, ["onnx"],
                      workdir=tmp_path, benchmark=BENCH)
    decision = result.decisions[1]
    assert decision["student"] == "incoming model" and decision["teacher"] == "original"
    assert decision["sparsity_kept_layers"] == ["fc1", "fc2", "fc3"]
    assert decision["student_after"]["accuracy"] >= decision["student_before"]["accuracy"]
    assert decision["student_after"]["accuracy"] >= decision["teacher_quality"]["accuracy"] - 0.02
    assert result.benchmarks[1].sparsity == pytest.approx(0.7, abs=0.01)


def test_onnx_teacher_and_uploaded_student(digits, train_npz, tmp_path):
    import torch
    from torch import nn

    from examples.digits import INPUT_NAME

    small = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    student_path = tmp_path / "small.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(small, (torch.zeros(2, 64),), dynamic_shapes={INPUT_NAME: {0: batch}}),
                      str(student_path))
    spec = {"type": "distill", "student": {"model_id": "S"}, "teacher": {"model_id": "T"}, "epochs": 6,
            "batch_size": 64, "lr": 1e-2}
    result = optimize(digits["torch_export"], [spec], {"train": train_npz, "eval": digits["eval"]}, ["onnx"],
                      workdir=tmp_path / "out", benchmark=BENCH,
                      extra_models={"S": student_path, "T": digits["onnx"]})
    decision = result.decisions[0]
    assert decision["teacher_runtime"] == "onnxruntime" and decision["student"] == "S"
    assert decision["student_parameters"] == 64 * 24 + 24 + 24 * 10 + 10
    assert decision["student_after"]["accuracy"] >= 0.85
    assert result.benchmarks[1].num_parameters == decision["student_parameters"]


def test_keep_every_on_a_hugging_face_encoder(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    model, train = _bert(tmp_path, layers=4)
    spec = {"type": "distill", "student": {"keep_every": 2}, "hidden_loss": 1.0, "attention_loss": 1.0,
            "augment": ["token_mask"], "epochs": 2, "batch_size": 16}
    result = optimize(model, [spec], {"train": train, "eval": train}, ["hf"], workdir=tmp_path / "out",
                      benchmark={**BENCH, "batch_sizes": [2]})
    decision = result.decisions[0]
    assert decision["kept_layers"] == [1, 3] and decision["hidden_pairs"] == [(0, 0), (1, 2), (2, 4)]
    assert decision["student_parameters"] < decision["teacher_parameters"]
    assert decision["fidelity_to_teacher"]["fidelity_cosine"] > 0.5
    unpacked = tmp_path / "hf"
    zipfile.ZipFile(result.artifacts[0].path).extractall(unpacked)
    loaded = AutoModelForSequenceClassification.from_pretrained(str(unpacked / "bert-optimized")).eval()
    assert loaded.config.num_hidden_layers == 2
    with torch.no_grad():
        assert loaded(input_ids=torch.tensor([[2, 7, 9, 3]])).logits.shape == (1, 3)


def test_cancel_stops_training_within_seconds(digits, train_npz, tmp_path):
    request = {"model": str(digits["torch_export"]), "workdir": str(tmp_path / "run"), "outputs": ["onnx"],
               "passes": [{"type": "distill", "student": {"width_ratio": 0.5}, "epochs": 1000}],
               "data": {"train": str(train_npz)}, "benchmark": BENCH}
    (tmp_path / "request.json").write_text(json.dumps(request))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "deepopt_core.cli", "run", str(tmp_path / "request.json")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        event: dict = {}
        assert process.stdout is not None
        while time.monotonic() < deadline and "metrics" not in event:
            event = json.loads(process.stdout.readline() or "{}")
        assert event.get("metrics", {}).get("loss") is not None and event["stage"].startswith("distill")
        os.killpg(process.pid, signal.SIGTERM)  # what the worker does on cancel
        started = time.monotonic()
        process.wait(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_submit_time_checks():
    model = {"format": "torch_export", "num_parameters": 1000, "inputs": [{"name": "input"}]}
    train = {"format": "npz", "num_rows": 10, "has_labels": False}

    def problems(spec: dict, *, train: dict | None = train, models: dict | None = None,
                 main: dict = model) -> list[str]:
        config = DistillConfig.model_validate({"type": "distill", **spec})
        return [m for _, m in check_pass(config, SubmitContext(model=main, train=train, models=models or {}))]

    assert problems({"student": {"width_ratio": 0.5}}) == []
    assert "train_dataset_id" in problems({"student": {"width_ratio": 0.5}}, train=None)[0]
    big = {"format": "hf", "num_parameters": 5000, "inputs": [{"name": "input"}]}
    assert "not smaller" in problems({"student": {"model_id": "big"}}, models={"big": big})[0]
    assert "no such model" in problems({"student": {"model_id": "missing"}})[0]
    assert "TorchScript" in problems({"student": {"width_ratio": 0.5}}, main={**model, "format": "torchscript"})[0]
    assert "keep_every" in problems({"student": {"keep_every": 2}})[0]
    assert "Hugging Face teachers" in problems({"student": {"width_ratio": 0.5}, "attention_loss": 1.0})[0]
    onnx_student = {"format": "onnx", "num_parameters": 10, "inputs": [{"name": "input"}]}
    assert "PyTorch" in problems({"student": {"model_id": "o"}}, models={"o": onnx_student})[0]
    # The job's model as the student of a named teacher: it too must be smaller.
    assert "not smaller" in problems({"teacher": {"model_id": "o"}}, models={"o": onnx_student})[0]
    assert problems({"teacher": {"model_id": "big"}}, models={"big": big}) == []
    spec = DistillConfig.model_validate({"type": "distill", "student": {"model_id": "s"}, "teacher": {"model_id": "t"},
                                         "steps": 5})
    assert referenced_models(spec) == ["s", "t"] and spec.max_steps == 5
    for bad in ({"model_id": "s", "keep_every": 2}, {}, {"keep_every": 1}, {"width_ratio": 1.0}):
        with pytest.raises(ValidationError):
            DistillConfig.model_validate({"type": "distill", "student": bad})


def test_untrainable_inputs_fail_clearly(digits, train_npz, tmp_path):
    from deepopt_core.datasets import load_dataset
    from deepopt_core.formats import inspect_model
    from deepopt_core.passes.context import PassContext, load_handle
    from deepopt_core.passes.distill.impl import apply_torch

    info = inspect_model(digits["torchscript"])
    ctx = PassContext(workdir=tmp_path, info=info, sample={}, train=load_dataset(train_npz),
                      source=digits["torchscript"])
    model = load_handle(digits["torchscript"], info, tmp_path).model
    with pytest.raises(PassFailed, match="TorchScript"):
        apply_torch(DistillConfig.model_validate({"type": "distill", "student": {"width_ratio": 0.5}}), model, ctx)
    ctx.train = None
    with pytest.raises(PassFailed, match="training dataset"):
        apply_torch(DistillConfig.model_validate({"type": "distill"}), model, ctx)


def _bert(tmp_path: Path, layers: int) -> tuple[Path, Path]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = [f"w{i}" for i in range(30)]
    folder = tmp_path / "bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        BertForSequenceClassification(config).eval().save_pretrained(str(folder))
        BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
                      ).save_pretrained(str(folder))
    archive = tmp_path / "bert.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, f"bert/{file.name}")
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": " ".join(words[w] for w in rng.integers(0, 30, size=6)), "label": i % 3})
             for i in range(64)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    return archive, tmp_path / "train.jsonl"
