"""A database that is busy (every pooled connection taken for the pool's timeout) or restarting answers 503 with
Retry-After as a problem document, not a 500; the pool has room for the requests the API serves at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tests.app.test_models import assert_problem


@pytest.mark.parametrize("error", [PoolTimeout("QueuePool limit of size 10 overflow 40 reached"),
                                   OperationalError("SELECT 1", {}, Exception("server closed the connection"))])
def test_an_unavailable_database_is_a_503_problem(app_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                  error: Exception) -> None:
    from app.api.routes import jobs
    from app.main import create_app

    async def unavailable(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(jobs, "read_rows", unavailable)  # how GET /v1/jobs/{id} reaches the database
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        response = client.get("/v1/jobs/any")
    problem = assert_problem(response, 503)
    assert problem["code"] == "database_unavailable" and response.headers["retry-after"] == "1"


def test_the_sqlite_pool_holds_a_connection_per_api_thread(app_env: Path) -> None:
    from app.core.db import get_engine

    pool = get_engine().pool
    assert pool.size() + pool._max_overflow >= 40  # type: ignore[attr-defined]


def test_requests_are_counted_by_route_template_and_status(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.api.metrics import REQUESTS
    from app.api.routes import jobs
    from app.main import create_app

    def count(status: str) -> float:
        return REQUESTS.labels("GET", "/v1/jobs/{job_id}", status)._value.get()  # type: ignore[attr-defined]

    before_404, before_500 = count("404"), count("500")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        assert client.get("/v1/jobs/nope").status_code == 404

        async def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(jobs, "read_rows", broken)
        assert client.get("/v1/jobs/nope").status_code == 500
    assert (count("404") - before_404, count("500") - before_500) == (1, 1)
