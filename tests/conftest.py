"""Shared fixtures: an in-process API on a fresh SQLite store, and live services (API + worker processes)
on the embedded default or on this machine's PostgreSQL and Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("DEEPOPT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# One Redis database per pytest-xdist worker (`make test` runs two): each test flushes its database, and a
# deployment's worker must not take another test's tasks. gw0/gw1 -> 10/11; a plain run -> 7.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_REDIS_DB = 10 + int(_XDIST_WORKER[2:]) if _XDIST_WORKER.startswith("gw") else 7
REDIS_URL = os.environ.get("DEEPOPT_TEST_REDIS", f"redis://127.0.0.1:6379/{_REDIS_DB}")

# Fast failure detection in tests: heartbeats every half second, a worker is dead after 4 s of silence.
FAST_RECOVERY = {
    "DEEPOPT_HEARTBEAT_INTERVAL_S": "0.5",
    "DEEPOPT_STALE_AFTER_S": "4",
    "DEEPOPT_REAPER_INTERVAL_S": "1",
    "DEEPOPT_REQUEUE_QUEUED_AFTER_S": "20",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks that follow from how a test runs: `postgres` on every run on the PostgreSQL + Redis backend (the
    `backend_env` fixture's postgres_redis parameter, however a test chose it), `e2e` on tests/e2e (live API and
    worker processes). `make test-fast` leaves out both."""
    e2e = ROOT / "tests" / "e2e"
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend_env") == "postgres_redis":
            item.add_marker(pytest.mark.postgres)
        if item.path.is_relative_to(e2e):
            item.add_marker(pytest.mark.e2e)


def reset_app_caches() -> None:
    from app.api.deps import get_storage
    from app.core.broker import get_sender
    from app.core.config import get_settings
    from app.core.db import get_engine, get_sessionmaker
    from app.core.reads import dispose_loop_sqlite_engines

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    dispose_loop_sqlite_engines()
    for cached in (get_settings, get_engine, get_sessionmaker, get_storage, get_sender):
        cached.cache_clear()


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the app at a fresh data dir (SQLite + filesystem broker), migrated."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DEEPOPT_DATA_DIR", str(data_dir))
    for name in ("DEEPOPT_DATABASE_URL", "DEEPOPT_BROKER_URL", "DEEPOPT_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    reset_app_caches()
    from app.core.migrate import upgrade

    upgrade()
    yield data_dir
    reset_app_caches()


@pytest.fixture
def client(app_env: Path) -> Iterator[httpx.Client]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveService:
    """A real API (uvicorn) and real Celery worker processes sharing one environment."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env = env
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "app.core.migrate"], env=self.env, cwd=ROOT, check=True)

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
        return subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)

    def start_api(self) -> None:
        from app.launcher import api_command

        self.api = self._spawn(api_command("127.0.0.1", self.port), "api")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.api.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"API did not start:\n{self.log('api')}")

    def start_worker(self, queues: str = "cpu") -> subprocess.Popen[bytes]:
        from app.launcher import worker_command

        worker = self._spawn(worker_command(queues), f"worker-{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Kill a worker's whole process group: the Celery process and its optimization child."""
        os.killpg(worker.pid, sig)
        worker.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers, self.api]:
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPT_")}
    env.update(FAST_RECOVERY)
    env["DEEPOPT_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(params=["embedded", "postgres_redis"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a whole deployment: embedded (SQLite + filesystem broker) or PostgreSQL + Redis."""
    env = _base_env(tmp_path / "data")
    if request.param == "embedded":
        yield env
        return
    import redis
    from sqlalchemy import create_engine, text

    schema = f"deepopt_test_{uuid.uuid4().hex[:10]}"
    # pre-ping: a fault test may restart PostgreSQL under this engine's pooled connection.
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    redis.Redis.from_url(REDIS_URL).flushdb()
    env["DEEPOPT_DATABASE_URL"] = f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    env["DEEPOPT_BROKER_URL"] = REDIS_URL
    try:
        yield env
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def live(backend_env: dict[str, str], tmp_path: Path) -> Iterator[LiveService]:
    """API + one worker on the chosen backend; the test may start and kill more workers."""
    service = LiveService(backend_env, tmp_path / "logs")
    service.migrate()
    service.start_api()
    service.start_worker()
    try:
        yield service
    finally:
        service.stop()


@dataclass(frozen=True)
class Digits:
    onnx: Path
    torchscript: Path
    torch_export: Path
    eval_npz: Path
    calibration_npz: Path
    test_inputs: np.ndarray
    test_labels: np.ndarray
    test_accuracy: float


@pytest.fixture(scope="session")
def digits_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits MLP as onnx / torchscript / torch_export, with digits_eval.npz and digits_calib.npz; built
    once per session (tests/deepopt_core uses these paths directly)."""
    import warnings

    from examples.digits import build_digits_models

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_digits_models(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def digits(digits_paths: dict[str, Path]) -> Digits:
    import onnxruntime as ort

    paths = digits_paths
    held_out = np.load(paths["eval"])
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": held_out["input"]})[0]
    accuracy = float((logits.argmax(axis=1) == held_out["labels"]).mean())
    assert accuracy > 0.9  # a real, trained model
    return Digits(
        onnx=paths["onnx"], torchscript=paths["torchscript"], torch_export=paths["torch_export"],
        eval_npz=paths["eval"], calibration_npz=paths["calibration"], test_inputs=held_out["input"],
        test_labels=held_out["labels"], test_accuracy=accuracy,
    )


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}


@dataclass(frozen=True)
class S3Server:
    """A local S3-compatible server (moto's server mode) on loopback."""

    endpoint: str

    def env(self, bucket: str, prefix: str = "blobs") -> dict[str, str]:
        return {**S3_ENV, "DEEPOPT_STORAGE_URL": f"s3://{bucket}/{prefix}", "DEEPOPT_S3_ENDPOINT_URL": self.endpoint}

    def filesystem(self) -> object:
        import s3fs

        return s3fs.S3FileSystem(key=S3_ENV["AWS_ACCESS_KEY_ID"], secret=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "eu-west-1"},
                                 skip_instance_cache=True, use_listings_cache=False)

    def make_bucket(self) -> str:
        bucket = f"deepopt-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(bucket)  # type: ignore[attr-defined]
        return bucket


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=log, start_new_session=True, env={**os.environ, **S3_ENV})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


class WebhookReceiver:
    """A webhook receiver on loopback that records each request and answers with the next planned status."""

    def __init__(self, statuses: list[int] | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, object]] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.requests)} webhook requests after {timeout} s, expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()
