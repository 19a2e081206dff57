"""The job row is the truth: claims are atomic and exclusive, the reaper recovers jobs of dead workers.

These run against the real store (SQLite here; the e2e tests repeat the flows on PostgreSQL) with rows in
each state a crash can leave behind."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from app.core.config import get_settings
from app.core.db import session_scope
from app.db.models import Job, Model, utcnow
from worker.reaper import reap_once
from worker.rows import claim, finish


@pytest.fixture
def job_id(app_env: Path) -> str:
    with session_scope() as session:
        model = Model(tenant="local", name="m", format="onnx", filename="m.onnx", size_bytes=1, sha256="0" * 64,
                      storage_key="0" * 64, info={"format": "onnx"})
        session.add(model)
        session.flush()
        job = Job(tenant="local", model_id=model.id, spec={"passes": []}, enqueued_at=utcnow())
        session.add(job)
        session.flush()
        return job.id


def read(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def age_heartbeat(job_id: str, seconds: float) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.heartbeat_at is not None
        job.heartbeat_at = job.heartbeat_at - timedelta(seconds=seconds)


def test_only_one_claim_wins(job_id: str) -> None:
    settings = get_settings()
    assert claim(job_id, "worker-a", settings)
    assert not claim(job_id, "worker-b", settings)  # a duplicate delivery finds it running
    job = read(job_id)
    assert job.status == "running" and job.worker_id == "worker-a" and job.attempts == 1


def test_stale_running_job_can_be_claimed_again(job_id: str) -> None:
    settings = get_settings()
    assert claim(job_id, "worker-a", settings)
    age_heartbeat(job_id, settings.stale_after_s + 1)
    assert claim(job_id, "worker-b", settings)
    assert not finish(job_id, "worker-a", status="succeeded")  # the old owner cannot finish it any more
    assert finish(job_id, "worker-b", status="succeeded")
    job = read(job_id)
    assert job.status == "succeeded" and job.attempts == 2


def sent_tasks(app_env: Path) -> list[str]:
    """Job ids of the run_job messages waiting in the embedded (filesystem) broker's queue folder."""
    import base64
    import json

    ids = []
    for path in sorted((app_env / "broker" / "queue").glob("*.msg")):
        message = json.loads(path.read_text())
        body = json.loads(base64.b64decode(message["body"]))
        ids.append(body[0][0])
    return ids


def test_reaper_requeues_then_fails_after_max_attempts(job_id: str, app_env: Path) -> None:
    settings = get_settings()
    for attempt in range(1, settings.max_attempts + 1):
        assert claim(job_id, f"worker-{attempt}", settings)
        assert reap_once()["requeued"] == 0  # a fresh heartbeat is left alone
        age_heartbeat(job_id, settings.stale_after_s + 1)
        counts = reap_once()
        if attempt < settings.max_attempts:
            assert counts["requeued"] == 1 and read(job_id).status == "queued"
        else:
            assert counts["failed"] == 1
    job = read(job_id)
    assert job.status == "failed" and job.error_code == "worker_lost" and "heartbeat" in (job.error_message or "")
    assert sent_tasks(app_env) == [job_id] * (settings.max_attempts - 1)


def test_reaper_cancels_a_dead_workers_cancelled_job(job_id: str) -> None:
    settings = get_settings()
    assert claim(job_id, "worker-a", settings)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.cancel_requested = True
    age_heartbeat(job_id, settings.stale_after_s + 1)
    assert reap_once()["cancelled"] == 1
    assert read(job_id).status == "cancelled"


def test_reaper_resends_long_queued_jobs(job_id: str, app_env: Path) -> None:
    settings = get_settings()
    assert reap_once()["resent"] == 0
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.enqueued_at is not None
        job.enqueued_at = job.enqueued_at - timedelta(seconds=settings.requeue_queued_after_s + 1)
    assert reap_once()["resent"] == 1 and sent_tasks(app_env) == [job_id]
    assert reap_once()["resent"] == 0  # not again until another interval has passed
