"""Dataset uploads: npz arrays and jsonl records, inspected; bad ones are problems."""

from __future__ import annotations

import json

import httpx
import numpy as np

from tests.app.conftest import npz_bytes
from tests.app.test_models import assert_problem


def test_npz_dataset(client: httpx.Client, tiny_eval_npz: bytes) -> None:
    response = client.post("/v1/datasets", files={"file": ("eval.npz", tiny_eval_npz)})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["format"] == "npz" and dataset["num_rows"] == 32 and dataset["has_labels"]
    assert dataset["arrays"]["input"] == [32, 4]
    assert client.get(f"/v1/datasets/{dataset['id']}").json() == dataset


def test_jsonl_dataset(client: httpx.Client) -> None:
    lines = "\n".join(json.dumps({"text": f"sentence {i}", "label": i % 2}) for i in range(10))
    response = client.post("/v1/datasets", files={"file": ("train.jsonl", lines.encode())})
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "jsonl" and response.json()["num_rows"] == 10


def test_bad_datasets(client: httpx.Client) -> None:
    ragged = npz_bytes(input=np.zeros((5, 4), np.float32), labels=np.zeros(3))
    assert_problem(client.post("/v1/datasets", files={"file": ("d.npz", ragged)}), 422, "file")
    assert_problem(client.post("/v1/datasets", files={"file": ("d.npz", b"PK\x03\x04garbage")}), 422, "file")
    assert_problem(client.post("/v1/datasets", files={"file": ("d.jsonl", b'{"text": 1}\nnot json')}), 422, "file")
