"""Tenants and keys: keys stored as hashes, another tenant's ids answer 404, revocation, quotas (429 with
Retry-After) and a per-key rate limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.core.config import get_settings
from app.core.db import get_sessionmaker
from app.db.models import ApiKey
from tests.app.test_models import assert_problem
from tests.conftest import ROOT


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def cli_key(tenant: str, *extra: str) -> str:
    """Issue a key with the shell command an operator would use."""
    proc = subprocess.run([sys.executable, "-m", "app.keys", "create", "--tenant", tenant, *extra], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return str(json.loads(proc.stdout)["key"])


def test_keys_tenants_and_revocation(client: httpx.Client, tiny_onnx: Path, tiny_eval_npz: bytes) -> None:
    admin = cli_key("ops", "--admin")
    assert_problem(client.get("/v1/models"), 401)  # issuing a key closed the open server
    assert_problem(client.post("/v1/admin/keys", json={"tenant": "acme"}), 401)

    created = client.post("/v1/admin/keys", json={"tenant": "acme", "name": "ci"}, headers=bearer(admin))
    assert created.status_code == 201, created.text
    acme = created.json()["key"]
    other = client.post("/v1/admin/keys", json={"tenant": "other"}, headers=bearer(admin)).json()["key"]
    assert_problem(client.post("/v1/admin/keys", json={"tenant": "x"}, headers=bearer(acme)), 403)
    listed = client.get("/v1/admin/keys", headers=bearer(admin)).json()
    assert {k["tenant"] for k in listed} == {"ops", "acme", "other"} and all("key" not in k for k in listed)

    with get_sessionmaker()() as session:  # only hashes are stored
        rows = session.scalars(select(ApiKey)).all()
        assert all(acme not in (r.key_sha256, r.name, r.prefix) for r in rows)
        assert all(len(r.key_sha256) == 64 for r in rows)

    model = client.post("/v1/models", files={"file": ("m.onnx", tiny_onnx.read_bytes())}, headers=bearer(acme))
    dataset = client.post("/v1/datasets", files={"file": ("e.npz", tiny_eval_npz)}, headers=bearer(acme))
    job = client.post("/v1/jobs", json={"model_id": model.json()["id"], "passes": [{"type": "quantize"}]},
                      headers=bearer(acme))
    assert (model.status_code, dataset.status_code, job.status_code) == (201, 201, 202)
    for path in (f"/v1/models/{model.json()['id']}", f"/v1/datasets/{dataset.json()['id']}",
                 f"/v1/jobs/{job.json()['id']}"):
        assert client.get(path, headers=bearer(acme)).status_code == 200
        assert_problem(client.get(path, headers=bearer(other)), 404)
    assert client.get("/v1/jobs", headers=bearer(other)).json()["items"] == []
    body = {"model_id": model.json()["id"], "passes": [{"type": "quantize"}]}
    assert_problem(client.post("/v1/jobs", json=body, headers=bearer(other)), 422, "model_id")

    key_id = next(k["id"] for k in listed if k["tenant"] == "acme")
    assert client.delete(f"/v1/admin/keys/{key_id}", headers=bearer(admin)).status_code == 204
    assert_problem(client.get("/v1/models", headers=bearer(acme)), 401)


def test_quotas_answer_429_with_retry_after(client: httpx.Client, tiny_onnx: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    data = tiny_onnx.read_bytes()
    monkeypatch.setattr(settings, "tenant_max_storage_bytes", int(1.5 * len(data)))  # room for one
    first = client.post("/v1/models", files={"file": ("m.onnx", data)})
    assert first.status_code == 201
    problem = client.post("/v1/models", files={"file": ("m.onnx", data)})
    assert_problem(problem, 429)
    assert problem.headers["retry-after"]

    monkeypatch.setattr(settings, "tenant_max_active_jobs", 1)
    body = {"model_id": first.json()["id"], "passes": [{"type": "quantize"}]}
    assert client.post("/v1/jobs", json=body).status_code == 202
    limited = client.post("/v1/jobs", json=body)
    assert_problem(limited, 429)
    assert int(limited.headers["retry-after"]) > 0


def test_rate_limit_per_key(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "rate_limit_per_minute", 3)
    key = cli_key("busy")
    statuses = [client.get("/v1/models", headers=bearer(key)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/v1/models", headers=bearer(key))
    assert int(limited.headers["retry-after"]) >= 1
