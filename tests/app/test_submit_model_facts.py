"""Jobs refused at submit from the stored inspection (issue 15), each a 422 naming the field and what to do: the
torch-only prune settings on an ONNX transformer export (ViT, torch.onnx.export), text datasets for a Hugging
Face model without a tokenizer in every dataset role, and a dataset of another sequence length than an encoder
exported with a fixed one. No worker runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.app.conftest import npz_bytes
from tests.app.test_models import assert_problem
from tests.app.test_quantize_specs import upload
from tests.fixtures.models import build_tiny_bert, write_text_jsonl

MODELS, DATASETS = "/v1/models", "/v1/datasets"


def _error(body: dict[str, Any], field: str) -> str:
    return next(e["message"] for e in body["errors"] if e["field"] == field)


def test_torch_only_prune_settings_on_an_onnx_vit_are_422(client: httpx.Client, tmp_path: Path) -> None:
    from tests.deepopt_core.passes.test_prune_onnx_transformers import export_transformer

    path, calibration = export_transformer("vit", tmp_path)
    model = upload(client, path, "vit.onnx", MODELS)
    data = {"calibration_dataset_id": upload(client, calibration, "calib.npz", DATASETS)}
    for prune, field in (({"method": "obs", "sparsity": 0.5}, "passes.0.method"),
                         ({"method": "structured", "sparsity": 0.5}, "passes.0.method"),
                         ({"method": "nm", "selection": "obs"}, "passes.0.selection")):
        response = client.post("/v1/jobs", json={"model_id": model, "passes": [{"type": "prune", **prune}], **data})
        message = _error(assert_problem(response, 422, field), field)
        assert "Hugging Face folder" in message and "magnitude" in message
    accepted = client.post("/v1/jobs", json={"model_id": model, "passes": [{"type": "prune", "sparsity": 0.5}]})
    assert accepted.status_code == 202, accepted.text  # magnitude runs on the ONNX graph


def test_text_datasets_for_a_model_without_a_tokenizer_are_422_in_every_role(client: httpx.Client,
                                                                             tmp_path: Path) -> None:
    model = upload(client, build_tiny_bert(tmp_path, archive="tar", tokenizer=False), "bert.tar.gz", MODELS)
    text = upload(client, write_text_jsonl(tmp_path / "text.jsonl"), "text.jsonl", DATASETS)
    for field in ("calibration_dataset_id", "eval_dataset_id", "train_dataset_id"):
        body = {"model_id": model, "passes": [{"type": "prune", "sparsity": 0.5}], field: text}
        message = _error(assert_problem(client.post("/v1/jobs", json=body), 422, field), field)
        assert "tokenizer" in message and ".npz of token ids" in message
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_dataset_of_another_length_than_a_fixed_export_is_422(client: httpx.Client, tmp_path: Path) -> None:
    from tests.deepopt_core.test_model_inputs_at_submit import export_encoder

    model = upload(client, export_encoder(tmp_path / "encoder.onnx", symbolic_sequence=False), "enc.onnx", MODELS)
    dataset = upload(client, npz_bytes(x=np.zeros((4, 24, 32), np.float32)), "length24.npz", DATASETS)
    body = {"model_id": model, "passes": [{"type": "prune", "sparsity": 0.5}], "eval_dataset_id": dataset}
    message = _error(assert_problem(client.post("/v1/jobs", json=body), 422, "eval_dataset_id"), "eval_dataset_id")
    assert "needs 16 at dimension 1" in message
