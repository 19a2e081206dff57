"""The `prune` methods at submit time: valid jobs are queued with their defaults filled in, bad configs are 422
naming the field (sparsity outside [0, 1), N >= M, structured pruning on a model with no prunable structure or on
TorchScript, fine-tuning without train data, OBS without data), the torch methods are accepted on an ONNX upload
(converted to torch when the job runs), and every method is in the OpenAPI schema. No worker runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.test_models import assert_problem
from tests.app.test_quantize_specs import Uploads


def build_one_linear_pt2(path: Path) -> Path:
    """A torch.export program of one Linear layer: nothing for structured pruning to remove."""
    import torch

    program = torch.export.export(torch.nn.Linear(64, 10), (torch.zeros(2, 64),))
    torch.export.save(program, str(path))
    return path


@pytest.fixture
def ids(client: httpx.Client, tiny_onnx: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Uploads:
    def digits(key: str) -> Any:
        return lambda: request.getfixturevalue("digits_paths")[key]

    models, datasets = "/v1/models", "/v1/datasets"
    return Uploads(client, {
        "onnx": (lambda: tiny_onnx, "tiny.onnx", models),
        "pt2": (digits("torch_export"), "digits.pt2", models),
        "ts": (digits("torchscript"), "digits.ts", models),
        "digits_onnx": (digits("onnx"), "digits.onnx", models),
        "one_linear": (lambda: build_one_linear_pt2(tmp_path / "one.pt2"), "one.pt2", models),
        "calibration": (digits("calibration"), "calib.npz", datasets),
        "train": (digits("eval"), "train.npz", datasets),
    })  # fmt: skip


def submit(client: httpx.Client, ids: Uploads, prune: dict[str, Any], *, model: str = "pt2",
           **datasets: str) -> httpx.Response:
    body = {"model_id": ids[model], "passes": [{"type": "prune", **prune}],
            **{f"{role}_dataset_id": ids[name] for role, name in datasets.items()}}
    return client.post("/v1/jobs", json=body)


BAD = [
    ({"sparsity": 1.0}, "onnx", {}, "passes.0.sparsity", "less than 1"),
    ({"method": "obs", "sparsity": -0.2}, "pt2", {"calibration": "calibration"}, "passes.0.sparsity", "0"),
    ({"method": "nm", "n": 4, "m": 4}, "onnx", {}, "passes.0", "smaller than m"),
    ({"method": "structured", "sparsity": 0.5}, "one_linear", {}, "passes.0.method", "no prunable structure"),
    ({"method": "structured", "sparsity": 0.5}, "ts", {}, "passes.0.method", "this one is TorchScript"),
    ({"method": "structured", "sparsity": 0.5, "units": ["channels"]}, "onnx", {}, "passes.0.units", "channels"),
    ({"method": "structured", "sparsity": 0.5, "units": ["heads"]}, "pt2", {}, "passes.0.units", "heads"),
    ({"sparsity": 0.5, "fine_tune": {"epochs": 1}}, "pt2", {}, "passes.0.fine_tune", "train_dataset_id"),
    ({"method": "nm", "fine_tune": {"epochs": 1}}, "pt2", {}, "passes.0.fine_tune", "train_dataset_id"),
    ({"sparsity": 0.5, "schedule": {"steps": 4}}, "pt2", {"train": "train"}, "passes.0.schedule", "fine_tune"),
    ({"method": "obs", "sparsity": 0.5}, "pt2", {}, "passes.0.method", "calibration_dataset_id"),
    ({"method": "obs", "sparsity": 0.5}, "onnx", {}, "passes.0.method", "calibration_dataset_id"),
    ({"method": "obs", "sparsity": 0.5}, "ts", {"calibration": "calibration"}, "passes.0.method", "TorchScript"),
    ({"sparsity": 0.5, "fine_tune": {"epochs": 1}}, "onnx", {}, "passes.0.fine_tune", "train_dataset_id"),
    ({"method": "structured", "sparsity": 0.5, "importance": "taylor"}, "pt2", {}, "passes.0.importance", "data"),
    ({"method": "obs", "sparsity": 0.5, "hessian": "outputs"}, "pt2", {"calibration": "calibration"},
     "passes.0.hessian", "fisher"),
]  # fmt: skip


def test_methods_are_queued_with_defaults_and_bad_configs_are_422(client: httpx.Client, ids: Uploads) -> None:
    """One test, so that each model is uploaded (and inspected in a child process) once."""
    for prune, model, datasets, field, words in BAD:
        problem = assert_problem(submit(client, ids, prune, model=model, **datasets), 422, field)
        assert words in problem["detail"], problem
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was created

    data = {"calibration": "calibration", "train": "train"}
    specs = {
        "magnitude": {"sparsity": 0.8, "schedule": {"steps": 3}, "fine_tune": {"epochs": 2}},
        "obs": {"sparsity": 0.7},
        "obs_inputs": {"method": "obs", "sparsity": 0.5, "hessian": "inputs"},
        "nm": {},
        "structured": {"sparsity": 0.5, "importance": "fisher", "fine_tune": {"epochs": 1, "lr": 1e-3}},
    }
    stored = {}
    for method, fields in specs.items():
        response = submit(client, ids, {"method": method, **fields}, **data)  # fields may name the method
        assert response.status_code == 202, response.text
        stored[method] = response.json()["spec"]["passes"][0]
    assert stored["magnitude"]["schedule"] == {"steps": 3, "initial_sparsity": 0.0}
    assert stored["magnitude"]["fine_tune"] == {"epochs": 2, "lr": 1e-3, "method": "auto", "batch_size": 32}
    assert {k: stored["obs"][k] for k in ("block_size", "num_gradients", "dampening", "scope", "keep_head")} == {
        "block_size": 32, "num_gradients": 128, "dampening": 0.01, "scope": "layer", "keep_head": True}
    assert stored["obs"]["hessian"] == "fisher" and stored["obs_inputs"]["hessian"] == "inputs"
    assert (stored["nm"]["n"], stored["nm"]["m"], stored["nm"]["selection"]) == (2, 4, "magnitude")
    assert stored["structured"]["units"] is None and stored["structured"]["exclude"] == []
    # N:M by magnitude runs on an ONNX upload; the torch methods convert it to torch (and export back).
    assert submit(client, ids, {"method": "nm", "n": 1, "m": 4}, model="onnx").status_code == 202
    for method, fields in specs.items():
        response = submit(client, ids, {"method": method, **fields}, model="digits_onnx", **data)
        assert response.status_code == 202, (method, response.text)


def test_every_method_is_in_the_openapi_schema(client: httpx.Client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name, fields in {"MagnitudePruneConfig": {"schedule", "fine_tune", "keep_head"},
                         "ObsPruneConfig": {"block_size", "num_gradients", "dampening", "schedule"},
                         "NMPruneConfig": {"n", "m", "selection"},
                         "StructuredPruneConfig": {"units", "importance", "round_to", "reconstruct"}}.items():
        assert fields <= set(schemas[name]["properties"]), name
