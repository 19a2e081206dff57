"""The cache of key lookups: a polling client costs no database round trip per request to be recognised, a
revocation in this process applies at once, one made elsewhere (another API process, `python -m app.keys
revoke`) within the cache's time to live."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from app.core.db import get_sessionmaker
from app.db.models import ApiKey, utcnow
from app.services.keys import KEY_CACHE, create_key, revoke_key
from tests.app.test_models import assert_problem


@pytest.fixture(autouse=True)
def short_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    KEY_CACHE.clear()
    monkeypatch.setattr(KEY_CACHE, "ttl_s", 0.5)


def issue(tenant: str) -> tuple[str, str]:
    with get_sessionmaker()() as session:
        row, key = create_key(session, tenant=tenant)
        return row.id, key


def test_a_revocation_elsewhere_applies_within_the_ttl(client: httpx.Client, app_env: Path) -> None:
    key_id, key = issue("acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    with get_sessionmaker()() as session:  # what another process's revocation does to the row
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
        session.commit()
    assert client.get("/v1/jobs", headers=headers).status_code == 200  # still cached
    time.sleep(0.6)
    assert_problem(client.get("/v1/jobs", headers=headers), 401)


def test_a_revocation_here_applies_at_once(client: httpx.Client, app_env: Path) -> None:
    key_id, key = issue("acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    with get_sessionmaker()() as session:
        revoke_key(session, key_id)
    assert_problem(client.get("/v1/jobs", headers=headers), 401)


def test_unknown_keys_are_not_cached(client: httpx.Client, app_env: Path) -> None:
    issue("acme")  # keys exist: the server is closed
    assert_problem(client.get("/v1/jobs", headers={"Authorization": "Bearer dok_nope"}), 401)
    assert KEY_CACHE.get("dok_nope") is None and len(KEY_CACHE._entries) == 0


def test_an_open_server_closes_when_a_key_is_issued(client: httpx.Client, app_env: Path) -> None:
    assert client.get("/v1/jobs").status_code == 200  # open: no key anywhere (and that is cached now)
    issue("acme")  # in this process: closed at once
    assert_problem(client.get("/v1/jobs"), 401)


def test_an_open_server_closes_within_the_ttl_of_a_key_issued_elsewhere(client: httpx.Client,
                                                                         app_env: Path) -> None:
    assert client.get("/v1/jobs").status_code == 200
    with get_sessionmaker()() as session:  # what `python -m app.keys create` in another process does
        session.add(ApiKey(tenant="acme", name="acme", key_sha256="0" * 64, prefix="dok_0"))
        session.commit()
    assert client.get("/v1/jobs").status_code == 200  # still known to be open, for the cache's ttl
    time.sleep(0.6)
    assert_problem(client.get("/v1/jobs"), 401)
