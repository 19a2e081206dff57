"""The clients against real servers: the generated Python client, real server-sent events, the `deepopt` CLI as
a user runs it, signed webhooks to a receiver on loopback, and artifacts on a local S3 server.

One distributed deployment serves the module: PostgreSQL + Redis + S3 (moto's server mode), an API process and a
worker process; the embedded default (SQLite + filesystem broker + local files) gets its own event-stream test."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.sse import parse_events
from tests.conftest import POSTGRES_ADMIN_URL, ROOT, LiveService, S3Server, WebhookReceiver, _base_env
from tests.e2e.test_flow import PIPELINE, TERMINAL, onnx_accuracy, upload, wait_for

REDIS_DB_URL = "redis://127.0.0.1:6379/8"
FAST_JOB = {"batch_sizes": [1, 8], "runs": 20}


@dataclass
class Stack:
    service: LiveService
    receiver: WebhookReceiver
    bucket: str
    s3: S3Server
    data_dir: Path

    @property
    def url(self) -> str:
        return self.service.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Stack]:
    import redis
    from sqlalchemy import create_engine, text

    tmp = tmp_path_factory.mktemp("stack")
    env = _base_env(tmp / "data")
    schema = f"deepopt_clients_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    redis.Redis.from_url(REDIS_DB_URL).flushdb()
    bucket = s3_server.make_bucket()
    receiver = WebhookReceiver(statuses=[500])  # the first delivery fails, the retry succeeds
    env.update(s3_server.env(bucket))
    env.update({
        "DEEPOPT_DATABASE_URL": f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}",
        "DEEPOPT_BROKER_URL": REDIS_DB_URL,
        "DEEPOPT_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "DEEPOPT_WEBHOOK_BACKOFF_S": "0.3",
        "DEEPOPT_WEBHOOK_INTERVAL_S": "0.2",
        # Streams poll the row only every 3 s here: prompt events prove the Redis wake-ups.
        "DEEPOPT_EVENTS_POLL_S": "3",
    })
    service = LiveService(env, tmp / "logs")
    service.migrate()
    service.start_api()
    service.start_worker()
    try:
        yield Stack(service, receiver, bucket, s3_server, tmp / "data")
    finally:
        service.stop()
        receiver.close()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        redis.Redis.from_url(REDIS_DB_URL).flushdb()


def stream_events(url: str, job_id: str, last_event_id: str | None = None,
                  stop_after: int | None = None) -> list[tuple[str, str | None, dict[str, Any], float]]:
    """Consume the job's event stream for real: (event, id, data, arrival time) until the final event (or
    `stop_after` state events, then the connection is dropped)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    received = []
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers,
                      timeout=httpx.Timeout(10, read=60)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_events(response.iter_lines()):
            if not event.event:
                continue
            received.append((event.event, event.id, event.json(), time.monotonic()))
            if event.event == "job" or (stop_after is not None and len(received) >= stop_after):
                break
    return received


def check_event_sequence(events: list[tuple[str, str | None, dict[str, Any], float]]) -> dict[str, Any]:
    kinds = [e[0] for e in events]
    assert kinds[-1] == "job" and set(kinds[:-1]) == {"state"}, kinds
    versions = [int(e[1] or -1) for e in events[:-1]]
    assert versions == sorted(set(versions)), versions  # strictly increasing ids
    assert events[-1][1] == f"{versions[-1]}-end"
    states = [e[2] for e in events[:-1]]
    assert states[-1]["status"] == events[-1][2]["status"] in TERMINAL
    running = [s["progress"] for s in states if s["status"] == "running"]
    assert running == sorted(running)  # progress only moves forward within a run
    return events[-1][2]


@pytest.mark.postgres  # the `stack` fixture: PostgreSQL and Redis
def test_generated_client_sse_webhook_and_s3(stack: Stack, digits: Any) -> None:
    """Upload, submit, follow, download with the generated client; the job on PostgreSQL + Redis + S3."""
    from deepopt_client import Client
    from deepopt_client.api.artifacts import download_artifact
    from deepopt_client.api.datasets import upload_dataset
    from deepopt_client.api.jobs import read_job, submit_job
    from deepopt_client.api.models import upload_model
    from deepopt_client.api.webhooks import read_job_webhook, read_webhook_secret
    from deepopt_client.models import JobCreate, JobRead, ModelRead, Problem, UploadDatasetBody, UploadModelBody
    from deepopt_client.types import File

    from app.services.webhooks import verify

    api = Client(base_url=stack.url, timeout=60)
    with open(digits.onnx, "rb") as handle:
        model = upload_model.sync(client=api, body=UploadModelBody(file=File(payload=handle,
                                                                              file_name="digits_mlp.onnx")))
    assert isinstance(model, ModelRead) and model.format_ == "onnx" and model.num_parameters > 0
    with open(digits.eval_npz, "rb") as handle:
        eval_set = upload_dataset.sync(client=api, body=UploadDatasetBody(file=File(payload=handle,
                                                                                     file_name="eval.npz")))
    body = JobCreate.from_dict({"model_id": model.id, "passes": PIPELINE, "eval_dataset_id": eval_set.id,
                                "benchmark": FAST_JOB, "callback_url": stack.receiver.url})
    job = submit_job.sync(client=api, body=body)
    assert isinstance(job, JobRead) and job.status == "queued"

    final = check_event_sequence(stream_events(stack.url, job.id))
    assert final["status"] == "succeeded", final
    polled = read_job.sync(client=api, job_id=job.id)
    assert isinstance(polled, JobRead) and polled.to_dict() == JobRead.from_dict(final).to_dict()

    (artifact,) = [a for a in polled.artifacts if a.kind == "model"]
    content = download_artifact.sync_detailed(client=api, artifact_id=artifact.id).content
    assert hashlib.sha256(content).hexdigest() == artifact.sha256 and len(content) == artifact.size_bytes
    assert onnx_accuracy(content, digits.test_inputs, digits.test_labels) >= digits.test_accuracy - 0.02

    # Every blob lives in the bucket, none on the local disk of the API or the worker.
    fs: Any = stack.s3.filesystem()
    for sha in (model.sha256, artifact.sha256):
        assert fs.exists(f"{stack.bucket}/blobs/{sha[:2]}/{sha}")
    assert not [p for p in (stack.data_dir / "blobs").rglob("*") if p.is_file()]

    # The webhook: the first try got a 500, the retry a 204; both signed with the tenant's secret.
    requests = stack.receiver.wait_for(2)
    secret = read_webhook_secret.sync(client=api)
    for request in requests:
        signature = {k.lower(): v for k, v in request["headers"].items()}["x-deepopt-signature"]  # type: ignore
        assert verify(secret.secret, request["body"], signature)  # type: ignore[arg-type, union-attr]
        payload = json.loads(request["body"])  # type: ignore[arg-type]
        assert payload["event"] == "job.succeeded" and payload["job"]["id"] == job.id
        assert {a["sha256"] for a in payload["job"]["artifacts"]} == {a.sha256 for a in polled.artifacts}
    deadline = time.monotonic() + 10
    while (delivery := read_job_webhook.sync(client=api, job_id=job.id)).status != "delivered":
        assert time.monotonic() < deadline, delivery
        time.sleep(0.1)
    assert delivery.attempts == 2 and delivery.last_status_code == 204

    problem = submit_job.sync(client=api, body=JobCreate.from_dict({"model_id": "nope", "passes": PIPELINE}))
    assert isinstance(problem, Problem) and problem.status == 422 and problem.errors[0].field == "model_id"

    metrics = httpx.get(f"{stack.url}/metrics").text
    for pass_type in ("prune", "quantize"):
        assert f'deepopt_pass_duration_seconds_count{{pass_type="{pass_type}"}} 1.0' in metrics
        assert f'deepopt_job_duration_seconds_count{{pass_type="{pass_type}"}} 1.0' in metrics
    assert 'deepopt_workers{queue="cpu",state="alive"} 1.0' in metrics
    assert 'deepopt_broker_queue_messages{queue="cpu"} 0.0' in metrics  # Redis answered
    assert 'deepopt_webhook_deliveries{status="delivered"} 1.0' in metrics


@pytest.mark.postgres  # the `stack` fixture: PostgreSQL and Redis
def test_redis_wakes_streams_before_their_poll(stack: Stack, digits: Any) -> None:
    """With Redis, a change reaches an open stream at once, though the stream re-reads the row only every 3 s."""
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        model = upload(client, digits.onnx)
        # No gpu worker here: the job stays queued until cancelled.
        job = client.post("/v1/jobs", json={"model_id": model["id"], "passes": PIPELINE[:1], "device": "cuda"}).json()
        cancelled_at: list[float] = []

        def cancel() -> None:
            time.sleep(1.0)
            cancelled_at.append(time.monotonic())
            client.post(f"/v1/jobs/{job['id']}/cancel")

        thread = threading.Thread(target=cancel)
        thread.start()
        events = stream_events(stack.url, job["id"])
        thread.join()
    assert [e[2]["status"] for e in events] == ["queued", "cancelled", "cancelled"]
    assert events[1][3] - cancelled_at[0] < 1.5, "the stream waited for its poll instead of the Redis wake-up"


def deepopt(stack: Stack, *args: str, key: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(stack.service.env, DEEPOPT_URL=stack.url, COLUMNS="200")
    env.pop("DEEPOPT_API_KEY", None)
    if key:
        env["DEEPOPT_API_KEY"] = key
    proc = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


@pytest.mark.postgres  # the `stack` fixture: PostgreSQL and Redis
def test_cli_as_a_user(stack: Stack, digits: Any, tmp_path: Path) -> None:
    model = json.loads(deepopt(stack, "models", "upload", str(digits.onnx), "--json").stdout)
    shown = deepopt(stack, "models", "upload", str(digits.torchscript)).stdout
    assert "torchscript" in shown and "input float32[batch, 64]" in shown
    eval_set = json.loads(deepopt(stack, "datasets", "upload", str(digits.eval_npz), "--json").stdout)

    waited = deepopt(stack, "jobs", "submit", "--model", model["id"], "--pass", "prune:method=magnitude,sparsity=0.5",
                     "--pass", "quantize:mode=dynamic,weight_dtype=int8", "-e", eval_set["id"], "--runs", "20",
                     "--batch-size", "1", "--wait")
    assert "succeeded" in waited.stdout and "prune(magnitude, sparsity=0.5) -> quantize(dynamic" in waited.stdout
    assert "digits_mlp-optimized.onnx" in waited.stdout and "original" in waited.stdout
    assert "running" in waited.stderr and "100%" in waited.stderr  # the progress, fed by the event stream
    job_id = waited.stdout.split()[1]

    job = json.loads(deepopt(stack, "jobs", "show", job_id, "--json").stdout)
    assert job["status"] == "succeeded" and job["spec"]["benchmark"]["runs"] == 20
    listed = json.loads(deepopt(stack, "jobs", "list", "--status", "succeeded", "--json").stdout)
    assert job_id in [j["id"] for j in listed["items"]]
    assert job_id in deepopt(stack, "jobs", "list").stdout

    (artifact,) = [a for a in job["artifacts"] if a["kind"] == "model"]
    target = tmp_path / "optimized.onnx"
    first = json.loads(deepopt(stack, "artifacts", "download", artifact["id"], "-o", str(target), "--json").stdout)
    data = target.read_bytes()
    assert hashlib.sha256(data).hexdigest() == artifact["sha256"] == first["sha256"]
    # An interrupted download resumes where it stopped; a corrupt partial file is caught by the sha256.
    target.unlink()
    (tmp_path / "optimized.onnx.part").write_bytes(data[:1000])
    resumed = json.loads(deepopt(stack, "artifacts", "download", artifact["id"], "-o", str(target), "--json").stdout)
    assert resumed["resumed_from"] == 1000 and resumed["downloaded_bytes"] == len(data) - 1000
    assert target.read_bytes() == data and not (tmp_path / "optimized.onnx.part").exists()
    target.unlink()
    (tmp_path / "optimized.onnx.part").write_bytes(b"x" * 1000)
    corrupt = deepopt(stack, "artifacts", "download", artifact["id"], "-o", str(target), check=False)
    assert corrupt.returncode == 1 and "sha256 mismatch" in corrupt.stderr and not target.exists()
    again = deepopt(stack, "artifacts", "download", artifact["id"], "-o", str(tmp_path)).stdout  # a folder
    assert "sha256" in again and (tmp_path / artifact["filename"]).read_bytes() == data
    assert "already here" in deepopt(stack, "artifacts", "download", artifact["id"], "-o", str(tmp_path)).stdout

    queued = json.loads(deepopt(stack, "jobs", "submit", "-m", model["id"], "-p", "quantize", "--device", "cuda",
                                "--json").stdout)
    assert "cancelled" in deepopt(stack, "jobs", "cancel", queued["id"]).stdout
    watched = deepopt(stack, "jobs", "watch", queued["id"], "--json", check=False)
    assert watched.returncode == 1  # it did not succeed
    lines = watched.stdout.strip().split("\n", 1)
    assert json.loads(lines[0])["status"] == "cancelled" and json.loads(lines[1])["status"] == "cancelled"

    missing = deepopt(stack, "models", "show", "nope", check=False)
    assert missing.returncode == 1 and "error: 404" in missing.stderr
    bad = deepopt(stack, "jobs", "submit", "-m", model["id"], "-p", "prune:sparsity=1.5", check=False)
    assert bad.returncode == 1 and "passes.0.sparsity" in bad.stderr


@pytest.mark.postgres  # the `stack` fixture: PostgreSQL and Redis
def test_keys_from_the_cli(stack: Stack) -> None:
    """Last in this module: issuing a key closes the open server."""
    admin = json.loads(deepopt(stack, "keys", "create", "--tenant", "ops", "--admin", "--local", "--json").stdout)
    acme = json.loads(deepopt(stack, "keys", "create", "--tenant", "acme", "--json", key=admin["key"]).stdout)
    assert acme["tenant"] == "acme" and acme["key"].startswith("dok_")
    assert json.loads(deepopt(stack, "models", "list", "--json", key=acme["key"]).stdout)["items"] == []
    closed = deepopt(stack, "models", "list", check=False)
    assert closed.returncode == 1 and "401" in closed.stderr
    human = deepopt(stack, "keys", "create", "--tenant", "acme", key=admin["key"]).stdout
    assert "export DEEPOPT_API_KEY=dok_" in human


@pytest.mark.parametrize("backend_env", ["embedded"], indirect=True)
def test_event_stream_on_the_embedded_default(live: LiveService, digits: Any) -> None:
    """SQLite + filesystem broker: the stream polls the row; a client that drops the connection and comes back
    with Last-Event-ID gets only what happened since, then the final job."""
    with httpx.Client(base_url=live.url, timeout=60) as client:
        model = upload(client, digits.onnx)
        slow = {"model_id": model["id"], "passes": PIPELINE, "benchmark": {"batch_sizes": [1, 64], "runs": 2000}}
        job = client.post("/v1/jobs", json=slow).json()
        wait_for(client, job["id"], {"running", *TERMINAL}, timeout=120)
        first = stream_events(live.url, job["id"], stop_after=1)
        assert first[0][0] == "state" and first[0][2]["status"] in ("running", "succeeded")
        rest = stream_events(live.url, job["id"], last_event_id=first[0][1])
        final = check_event_sequence(rest) if len(rest) > 1 else rest[-1][2]
        resumed_ids = [int(e[1] or -1) for e in rest if e[0] == "state"]
        assert all(version > int(first[0][1] or -1) for version in resumed_ids)  # nothing sent twice
        assert final["status"] == "succeeded" and final == client.get(f"/v1/jobs/{job['id']}").json()
        seen = {e[2]["stage"] for e in first + rest if e[0] == "state"}
        assert "benchmark" in seen or len(seen) >= 2, seen
