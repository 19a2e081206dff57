"""The training passes at submit time: `distill` and `finetune` jobs without training data, with `target_modules`
that match no module of the model, or with an uploaded student that is not smaller than its teacher are 422
naming the field, before any job exists; the same jobs made right are queued. No worker runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.test_models import assert_problem
from tests.app.test_quantize_specs import Uploads
from tests.deepopt_core.passes.test_finetune import tiny_bert

pytestmark = pytest.mark.filterwarnings("ignore")


def small_torchscript(path: Path) -> Path:
    """A 64 -> 8 -> 10 MLP (610 parameters) with the digits models' input name, as TorchScript."""
    import torch

    module = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)).eval()
    torch.jit.save(torch.jit.trace(module, torch.zeros(1, 64)), str(path))
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def ids(client: httpx.Client, tiny_onnx: Path, bert: dict[str, Path], tmp_path: Path,
        request: pytest.FixtureRequest) -> Uploads:
    models, datasets = "/v1/models", "/v1/datasets"
    return Uploads(client, {
        "bert": (lambda: bert["model"], "bert.zip", models),
        "text": (lambda: bert["train"], "train.jsonl", datasets),
        "tiny_onnx": (lambda: tiny_onnx, "tiny.onnx", models),  # 128 parameters
        "digits_ts": (lambda: request.getfixturevalue("digits_paths")["torchscript"], "digits.ts", models),
        "digits_pt2": (lambda: request.getfixturevalue("digits_paths")["torch_export"], "digits.pt2", models),
        "digits_npz": (lambda: request.getfixturevalue("digits_paths")["calibration"], "train.npz", datasets),
        "small_ts": (lambda: small_torchscript(tmp_path / "small.pt"), "small.pt", models),  # 610 parameters
    })  # fmt: skip


def submit(client: httpx.Client, ids: Uploads, model: str, spec: dict[str, Any], **fields: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"model_id": ids[model], "passes": [spec], "outputs": ["onnx"], **fields})


def test_no_training_data_is_422(client: httpx.Client, ids: Uploads) -> None:
    for spec in ({"type": "finetune", "method": "lora"}, {"type": "finetune", "method": "full"},
                 {"type": "distill", "student": {"keep_every": 2}}):
        problem = assert_problem(submit(client, ids, "bert", spec), 422, "passes.0")
        assert "train_dataset_id" in problem["detail"], problem
        assert submit(client, ids, "bert", spec, train_dataset_id=ids["text"]).status_code == 202


def test_target_modules_that_match_nothing_are_422(client: httpx.Client, ids: Uploads) -> None:
    train = {"train_dataset_id": ids["text"]}
    for method in ("lora", "adapter_series", "adapter_parallel"):
        spec = {"type": "finetune", "method": method, "target_modules": ["q_proj", "query"]}
        problem = assert_problem(submit(client, ids, "bert", spec, **train), 422, "passes.0.target_modules")
        assert "['q_proj'] match no module" in problem["detail"], problem
        for good in (["query"], ["encoder.layer.1.attention.self.value"], ["output.dense"]):
            response = submit(client, ids, "bert", {**spec, "target_modules": good}, **train)
            assert response.status_code == 202, (good, response.text)


def test_a_student_not_smaller_than_its_teacher_is_422(client: httpx.Client, ids: Uploads) -> None:
    train = {"train_dataset_id": ids["digits_npz"]}
    # An uploaded student as large as its teacher (the digits MLP as .pt2, teaching from TorchScript).
    spec = {"type": "distill", "student": {"model_id": ids["digits_pt2"]}}
    problem = assert_problem(submit(client, ids, "digits_ts", spec, **train), 422, "passes.0.student.model_id")
    assert "is not smaller than the teacher" in problem["detail"], problem
    # The job's model as the student of a named teacher: the digits MLP under a 128-parameter ONNX model.
    spec = {"type": "distill", "teacher": {"model_id": ids["tiny_onnx"]}}
    problem = assert_problem(submit(client, ids, "digits_ts", spec, **train), 422, "passes.0.student")
    assert "is not smaller than the teacher" in problem["detail"], problem
    missing = {"type": "distill", "student": {"model_id": "no-such-model"}}
    assert_problem(submit(client, ids, "digits_ts", missing, **train), 422, "passes.0.student.model_id")
    # A smaller uploaded student is queued.
    spec = {"type": "distill", "student": {"model_id": ids["small_ts"]}}
    response = submit(client, ids, "digits_ts", spec, **train)
    assert response.status_code == 202, response.text
    # A derived student is smaller by construction; keeping every layer is not a student.
    text = {"train_dataset_id": ids["text"]}
    assert submit(client, ids, "bert", {"type": "distill", "student": {"keep_every": 2}}, **text).status_code == 202
    response = submit(client, ids, "bert", {"type": "distill", "student": {"keep_every": 1}}, **text)
    assert response.status_code == 422 and "keep_every" in response.text


def test_auto_with_only_distill_and_no_training_data_is_422(client: httpx.Client, ids: Uploads) -> None:
    spec = {"type": "auto", "allowed": ["distill"]}
    data = {"eval_dataset_id": ids["digits_npz"]}
    problem = assert_problem(submit(client, ids, "digits_pt2", spec, **data), 422, "passes.0.allowed")
    assert "train_dataset_id" in problem["detail"], problem
    assert submit(client, ids, "digits_pt2", spec, train_dataset_id=ids["digits_npz"], **data).status_code == 202
    # With other passes allowed the training recipes are skipped with a note instead.
    assert submit(client, ids, "digits_pt2", {**spec, "allowed": ["quantize", "distill"]}, **data).status_code == 202
