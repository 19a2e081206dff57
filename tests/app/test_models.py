"""Model upload, listing, download and deletion through the HTTP API, with every 4xx as a problem body."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import httpx
import pytest


def upload(client: httpx.Client, data: bytes, filename: str = "model.onnx", **fields: str) -> httpx.Response:
    return client.post("/v1/models", files={"file": (filename, data)}, data=fields)


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def test_upload_onnx_is_inspected_and_downloadable(client: httpx.Client, tiny_onnx: Path) -> None:
    data = tiny_onnx.read_bytes()
    response = upload(client, data, "whatever.bin", name="tiny")
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["format"] == "onnx" and model["name"] == "tiny"
    assert model["sha256"] == hashlib.sha256(data).hexdigest() and model["size_bytes"] == len(data)
    assert model["num_parameters"] == 4 * 16 + 16 + 16 * 3
    assert [t["name"] for t in model["inputs"]] == ["input"]

    assert client.get(f"/v1/models/{model['id']}").json()["id"] == model["id"]
    content = client.get(f"/v1/models/{model['id']}/content")
    assert content.status_code == 200 and content.content == data
    assert content.headers["etag"] == f'"{model["sha256"]}"'
    partial = client.get(f"/v1/models/{model['id']}/content", headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.content == data[10:20]
    assert partial.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert_problem(client.get(f"/v1/models/{model['id']}/content", headers={"Range": "bytes=999999-"}), 416)


def test_list_models_paginates(client: httpx.Client, tiny_onnx: Path) -> None:
    ids = [upload(client, tiny_onnx.read_bytes(), name=f"m{i}").json()["id"] for i in range(3)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/models", params=params).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    assert_problem(client.get("/v1/models", params={"cursor": "garbage!"}), 422, "cursor")
    assert_problem(client.get("/v1/models", params={"limit": 0}), 422, "limit")


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"", 422, "empty_file"),
        (b"this is not a model at all" * 10, 415, None),
        (pickle.dumps({"a": 1}), 422, None),
    ],
    ids=["empty", "garbage", "pickle"],
)
def test_bad_uploads_are_problems(client: httpx.Client, app_env: Path, payload: bytes, status: int,
                                  code: str | None) -> None:
    body = assert_problem(upload(client, payload), status, "file")
    if code:
        assert body["code"] == code
    assert client.get("/v1/models").json()["items"] == []
    assert list((app_env / "blobs" / "tmp").iterdir()) == []  # nothing left behind


def test_torch_save_zip_is_refused_unpickled(client: httpx.Client, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps({"weights": [1, 2, 3]}))
        archive.writestr("model/version", "3\n")
    assert_problem(upload(client, buffer.getvalue(), "model.pt"), 422, "file")


def test_truncated_onnx_is_refused(client: httpx.Client, tiny_onnx: Path) -> None:
    data = tiny_onnx.read_bytes()
    response = upload(client, data[: len(data) // 2])
    assert response.status_code in (415, 422), response.text
    assert_problem(response, response.status_code, "file")


def test_upload_over_the_limit_is_cut_off(client: httpx.Client, monkeypatch: pytest.MonkeyPatch,
                                          app_env: Path) -> None:
    from app.core.config import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1000)
    assert_problem(upload(client, b"\0" * 5000), 413, "file")
    assert list((app_env / "blobs" / "tmp").iterdir()) == []


def test_upload_needs_multipart_with_a_file(client: httpx.Client) -> None:
    assert_problem(client.post("/v1/models", json={"file": "x"}), 415, "file")
    assert_problem(client.post("/v1/models", data={"name": "x"}, files={"other": ("a", b"b")}), 422, "file")


def test_unknown_ids_are_404_problems(client: httpx.Client) -> None:
    for path in ("/v1/models/nope", "/v1/models/nope/content", "/v1/datasets/nope", "/v1/jobs/nope",
                 "/v1/artifacts/nope", "/v1/artifacts/nope/content"):
        assert_problem(client.get(path), 404)
    assert_problem(client.post("/v1/jobs/nope/cancel"), 404)


def test_api_keys_guard_v1(client: httpx.Client, monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path) -> None:
    from app.core.config import get_settings

    monkeypatch.setattr(get_settings(), "api_keys", "acme:secret-a,other:secret-b")
    assert_problem(client.get("/v1/models"), 401)
    assert_problem(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    created = client.post("/v1/models", files={"file": ("m.onnx", tiny_onnx.read_bytes())},
                          headers={"Authorization": "Bearer secret-a"})
    assert created.status_code == 201
    mine = client.get(f"/v1/models/{created.json()['id']}", headers={"Authorization": "Bearer secret-a"})
    assert mine.status_code == 200
    theirs = client.get(f"/v1/models/{created.json()['id']}", headers={"Authorization": "Bearer secret-b"})
    assert_problem(theirs, 404)
    assert client.get("/healthz").status_code == 200  # health stays open


def test_every_model_format_is_detected_from_its_bytes(client: httpx.Client, digits: object,
                                                       tmp_path: Path) -> None:
    from tests.conftest import Digits

    assert isinstance(digits, Digits)
    for path, fmt in ((digits.onnx, "onnx"), (digits.torchscript, "torchscript"),
                      (digits.torch_export, "torch_export")):
        model = upload(client, path.read_bytes(), "no-extension")
        assert model.status_code == 201, model.text
        body = model.json()
        assert body["format"] == fmt and body["num_parameters"] == 17226
        assert body["inputs"][0]["name"] == "input" and body["inputs"][0]["shape"][-1] == 64


def test_hugging_face_archive_upload(client: httpx.Client, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-bert"
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in folder.iterdir():
            archive.write(file, f"tiny-bert/{file.name}")
    response = upload(client, buffer.getvalue(), "tiny-bert.zip")
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["format"] == "hf"
    assert model["num_parameters"] == sum(p.numel() for p in BertModel(config).parameters())
    assert {t["name"] for t in model["inputs"]} >= {"input_ids", "attention_mask"}


@pytest.mark.parametrize("member", ["../evil/config.json", "/etc/config.json"])
def test_archive_members_may_not_escape(client: httpx.Client, member: str, app_env: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/config.json", '{"model_type": "bert"}')
        archive.writestr("model/model.safetensors", b"\0" * 16)
        archive.writestr(member, "{}")
    assert_problem(upload(client, buffer.getvalue(), "m.zip"), 422, "file")
    assert not (app_env.parent / "evil").exists()
    assert client.get("/v1/models").json()["items"] == []
