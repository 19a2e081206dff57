"""Conditional GET of jobs: a weak ETag that moves with every visible change, `If-None-Match` answered 304 with no
body (after the tenancy check), on one job and on a page of jobs; bodies served from the cache stay exact."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from app.core.db import get_sessionmaker
from app.db.models import Job
from app.schemas import JobRead, Page
from app.services.keys import create_key
from tests.app.test_models import assert_problem

PASSES = [{"type": "quantize", "mode": "dynamic", "weight_dtype": "int8"}]


@pytest.fixture
def job_id(client: httpx.Client, tiny_onnx: Path) -> str:
    model = client.post("/v1/models", files={"file": ("tiny.onnx", tiny_onnx.read_bytes())}).json()
    return str(client.post("/v1/jobs", json={"model_id": model["id"], "passes": PASSES}).json()["id"])


def change_row(job_id: str, **values: object) -> None:
    """What a worker does to a job row."""
    with get_sessionmaker()() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def test_a_job_answers_304_while_it_did_not_change(client: httpx.Client, job_id: str) -> None:
    first = client.get(f"/v1/jobs/{job_id}")
    etag = first.headers["etag"]
    assert first.status_code == 200 and etag.startswith('W/"')
    JobRead.model_validate(first.json())
    for sent in (etag, etag.removeprefix("W/"), f'"other", {etag}', "*"):
        cached = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": sent})
        assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag), sent
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": 'W/"other"'}).status_code == 200

    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202  # bumps the version
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] != etag
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": changed.headers["etag"]}).status_code == 304


def test_the_tag_follows_every_change_a_client_sees(client: httpx.Client, job_id: str) -> None:
    seen = {client.get(f"/v1/jobs/{job_id}").headers["etag"]}
    # A heartbeat may change the metrics alone, without a version bump: the tag still moves, the body too.
    change_row(job_id, metrics={"loss": 0.5, "step": 1})
    response = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": next(iter(seen))})
    assert response.status_code == 200 and response.json()["metrics"] == {"loss": 0.5, "step": 1}
    seen.add(response.headers["etag"])
    change_row(job_id, status="running", stage="quantize", progress=0.5, version=Job.version + 1)
    response = client.get(f"/v1/jobs/{job_id}")
    assert (response.json()["status"], response.json()["progress"]) == ("running", 0.5)
    seen.add(response.headers["etag"])
    assert len(seen) == 3


def test_another_tenants_tag_is_still_404(client: httpx.Client, job_id: str) -> None:
    etag = client.get(f"/v1/jobs/{job_id}").headers["etag"]
    with get_sessionmaker()() as session:
        _, other = create_key(session, tenant="other")  # the server is closed from now on
    headers = {"Authorization": f"Bearer {other}"}
    assert_problem(client.get(f"/v1/jobs/{job_id}", headers={**headers, "If-None-Match": etag}), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag}), 401)


def test_a_page_of_jobs_answers_304_until_one_changes(client: httpx.Client, tiny_onnx: Path) -> None:
    model = client.post("/v1/models", files={"file": ("tiny.onnx", tiny_onnx.read_bytes())}).json()
    ids = [client.post("/v1/jobs", json={"model_id": model["id"], "passes": PASSES}).json()["id"] for _ in range(3)]
    page = client.get("/v1/jobs", params={"limit": 2})
    body = Page[JobRead].model_validate_json(page.content)  # the page as the schema says, built from cached bodies
    assert [job.id for job in body.items] == ids[::-1][:2] and body.next_cursor
    assert body.items[0] == JobRead.model_validate(client.get(f"/v1/jobs/{ids[-1]}").json())
    etag = page.headers["etag"]
    assert client.get("/v1/jobs", params={"limit": 2}, headers={"If-None-Match": etag}).status_code == 304
    rest = client.get("/v1/jobs", params={"limit": 2, "cursor": body.next_cursor})
    assert [job["id"] for job in rest.json()["items"]] == [ids[0]] and rest.json()["next_cursor"] is None
    assert rest.headers["etag"] != etag

    client.post(f"/v1/jobs/{ids[-1]}/cancel")
    changed = client.get("/v1/jobs", params={"limit": 2}, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["items"][0]["status"] == "cancelled"
    assert changed.headers["etag"] != etag
    assert client.get("/v1/jobs", params={"status": "running"}).json() == {"items": [], "next_cursor": None}
