"""Load benchmark of the API on loopback (`make bench-load`): writes benchmarks/results/load.{json,md}.

For each deployment (the embedded default: SQLite + filesystem broker, one API process; PostgreSQL + Redis with
two API processes) it starts the API, issues a tenant key (`python -m app.keys create`), runs one real job with a
worker (so the polled job has artifacts and benchmarks), stops the worker, and drives the API with N concurrent
async httpx clients (default 32), bounded in count and time:

1. `ceiling`: GET of a bare FastAPI endpoint (same uvicorn settings, same number of processes) that returns the
   polled job's own JSON body, parsed, as a dict;
2. `poll`: GET /v1/jobs/{id} of that job, authenticated (1 and 2 alternate in rounds, so that a change in the
   load of the machine weighs on both alike);
3. `mixed`: job submissions, GET /v1/jobs/{id} polling of the submitted jobs and model uploads, mixed.

Then, on the embedded deployment, a 2 GB upload streamed to POST /v1/models while the API process's RSS is sampled.
No worker runs during the load phases: the submitted jobs stay queued, and what is measured is the API alone.

    python -m benchmarks.load [--clients 32] [--seconds 12] [--rounds 4] [--max-requests 20000] [--upload-gb 2]
                              [--only embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
POSTGRES_URL = os.environ.get("DEEPOPT_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DEEPOPT_BENCH_REDIS", "redis://127.0.0.1:6379/8")
JOB_PASSES = [{"type": "quantize", "mode": "dynamic", "weight_dtype": "int8"}]
RATIO_TARGET = 0.6

# ----------------------------------------------------------------------------------------------------------------
# The ceiling: a bare FastAPI app that returns a job-sized JSON (the polled job's body, read from a file)
# ----------------------------------------------------------------------------------------------------------------


def _bare_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    body = json.loads(Path(os.environ["DEEPOPT_BENCH_BODY"]).read_text())

    @app.get("/bare/jobs/{job_id}")
    def bare_job(job_id: str) -> dict[str, Any]:
        return {**body, "id": job_id}

    return app


def __getattr__(name: str) -> Any:  # `uvicorn benchmarks.load:bare_app` builds it only in the bare server
    if name == "bare_app":
        return _bare_app()
    raise AttributeError(name)


# ----------------------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_command(target: str, port: int, processes: int) -> list[str]:
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
               "--no-access-log", "--log-level", "warning"]
    return command + (["--workers", str(processes)] if processes > 1 else [])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(command: list[str], env: dict[str, str], log: Path, health: str) -> Server:
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True)
    port = command[command.index("--port") + 1] if "--port" in command else ""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + health, timeout=1).status_code < 500:
                return Server(proc, url)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"{command} did not start:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def deployment(name: str, workdir: Path) -> Iterator[dict[str, str]]:
    """The environment of one deployment; PostgreSQL gets a fresh schema, Redis a flushed database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPT_")}
    env.update({"DEEPOPT_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(ROOT)})
    if name == "embedded":
        yield env
        return
    import redis
    from sqlalchemy import create_engine, text

    schema = f"deepopt_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    redis.Redis.from_url(REDIS_URL).flushdb()
    env["DEEPOPT_DATABASE_URL"] = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    env["DEEPOPT_BROKER_URL"] = REDIS_URL
    try:
        yield env
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        redis.Redis.from_url(REDIS_URL).flushdb()


# ----------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, endpoint: str, seconds: float, ok: bool, detail: str = "") -> None:
        self.latencies.setdefault(endpoint, []).append(seconds)
        if not ok:
            self.errors[endpoint] = self.errors.get(endpoint, 0) + 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{endpoint}: {detail[:300]}")

    def merge(self, other: Stats) -> None:
        for endpoint, values in other.latencies.items():
            self.latencies.setdefault(endpoint, []).extend(values)
        for endpoint, count in other.errors.items():
            self.errors[endpoint] = self.errors.get(endpoint, 0) + count
        self.error_samples = (self.error_samples + other.error_samples)[:5]
        self.seconds += other.seconds

    def summary(self) -> dict[str, Any]:
        rows = {}
        for endpoint, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            rows[endpoint] = {
                "requests": len(values),
                "throughput_per_s": round(len(values) / self.seconds, 1) if self.seconds else 0.0,
                "p50_ms": round(1000 * statistics.median(ordered), 2),
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
                "errors": self.errors.get(endpoint, 0),
            }
        return {"seconds": round(self.seconds, 2), "endpoints": rows, "error_samples": self.error_samples}


async def drive(clients: int, seconds: float, max_requests: int, step: Callable[[httpx.AsyncClient, Stats],
                Awaitable[None]], base_url: str, headers: dict[str, str]) -> Stats:
    """`clients` concurrent loops of `step` until `seconds` pass or `max_requests` steps are done."""
    stats = Stats()
    budget = [max_requests]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as http:
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                await step(http, stats)

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(clients)))
        stats.seconds = time.monotonic() - started
    return stats


async def timed(stats: Stats, endpoint: str, request: Awaitable[httpx.Response],
                expected: int) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await request
    except httpx.HTTPError as exc:
        stats.record(endpoint, time.perf_counter() - started, False, repr(exc))
        return None
    ok = response.status_code == expected
    stats.record(endpoint, time.perf_counter() - started, ok, f"{response.status_code} {response.text}")
    return response


def get_step(path: Callable[[], str], endpoint: str) -> Callable[[httpx.AsyncClient, Stats], Awaitable[None]]:
    async def step(http: httpx.AsyncClient, stats: Stats) -> None:
        await timed(stats, endpoint, http.get(path()), 200)

    return step


def mixed_step(model_id: str, model_bytes: bytes, job_ids: list[str]) -> Callable[[httpx.AsyncClient, Stats],
                                                                                     Awaitable[None]]:
    """80% polls of a known job, 15% job submissions, 5% model uploads (each upload is inspected in a child
    process, as every real upload is)."""
    rng = random.Random(0)

    async def step(http: httpx.AsyncClient, stats: Stats) -> None:
        draw = rng.random()
        if draw < 0.05:
            await timed(stats, "POST /v1/models", http.post(
                "/v1/models", files={"file": ("tiny.onnx", model_bytes, "application/octet-stream")}), 201)
        elif draw < 0.20:
            response = await timed(stats, "POST /v1/jobs", http.post(
                "/v1/jobs", json={"model_id": model_id, "passes": JOB_PASSES}), 202)
            if response is not None and response.status_code == 202:
                job_ids.append(response.json()["id"])
        else:
            await timed(stats, "GET /v1/jobs/{id}", http.get(f"/v1/jobs/{rng.choice(job_ids)}"), 200)

    return step


# ----------------------------------------------------------------------------------------------------------------
# One deployment
# ----------------------------------------------------------------------------------------------------------------


def prepare_job(env: dict[str, str], api: Server, headers: dict[str, str], workdir: Path,
                model_bytes: bytes) -> tuple[str, str, dict[str, Any]]:
    """Upload the tiny model and run one job to the end with a worker, so the polled job is a finished one."""
    from app.launcher import worker_command

    with httpx.Client(base_url=api.url, headers=headers, timeout=60) as http:
        model = http.post("/v1/models", files={"file": ("tiny.onnx", model_bytes)})
        model.raise_for_status()
        model_id = model.json()["id"]
        job = http.post("/v1/jobs", json={"model_id": model_id, "passes": JOB_PASSES,
                                          "benchmark": {"batch_sizes": [1], "runs": 5}})
        job.raise_for_status()
        job_id = job.json()["id"]
        with open(workdir / "worker.log", "ab") as out:
            worker = subprocess.Popen(worker_command("cpu"), env=env, cwd=ROOT, stdout=out, stderr=out,
                                      start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                body = http.get(f"/v1/jobs/{job_id}").json()
                if body["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            if body["status"] != "succeeded":
                raise RuntimeError(f"the warm-up job ended {body['status']}: {body.get('error')}")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    return model_id, job_id, body


def run_deployment(name: str, processes: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tests.app.conftest import build_tiny_onnx

    model_bytes = build_tiny_onnx(workdir / "tiny.onnx").read_bytes()
    with deployment(name, workdir) as env:
        subprocess.run([sys.executable, "-m", "app.core.migrate"], env=env, cwd=ROOT, check=True)
        created = subprocess.run([sys.executable, "-m", "app.keys", "create", "--tenant", "bench"], env=env,
                                 cwd=ROOT, check=True, capture_output=True, text=True)
        headers = {"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}
        api = start(uvicorn_command("app.main:app", free_port(), processes), env, workdir / "api.log", "/healthz")
        try:
            model_id, job_id, body = prepare_job(env, api, headers, workdir, model_bytes)
            body_path = workdir / "job.json"
            body_path.write_text(json.dumps(body))
            bare = start(uvicorn_command("benchmarks.load:bare_app", free_port(), processes),
                         {**env, "DEEPOPT_BENCH_BODY": str(body_path)}, workdir / "bare.log", f"/bare/jobs/{job_id}")
            try:
                bare_body = httpx.get(f"{bare.url}/bare/jobs/{job_id}").content
                phases: dict[str, Any] = {}
                targets = {
                    "ceiling": (bare.url, get_step(lambda: f"/bare/jobs/{job_id}", "GET /bare/jobs/{id}")),
                    "poll": (api.url, get_step(lambda: f"/v1/jobs/{job_id}", "GET /v1/jobs/{id}")),
                }
                for url, step in targets.values():
                    asyncio.run(drive(args.clients, 1.5, 500, step, url, headers))  # warm-up
                # Alternating rounds, so that a change in the machine's load hits both alike.
                merged = {phase: Stats() for phase in targets}
                for _ in range(args.rounds):
                    for phase, (url, step) in targets.items():
                        stats = asyncio.run(drive(args.clients, args.seconds / args.rounds,
                                                  args.max_requests // args.rounds, step, url, headers))
                        merged[phase].merge(stats)
                for phase, stats in merged.items():
                    phases[phase] = stats.summary()
                    print(f"{name} {phase}: {json.dumps(phases[phase]['endpoints'])}", flush=True)
            finally:
                bare.stop()
            job_ids = [job_id]
            stats = asyncio.run(drive(args.clients, args.seconds, args.max_requests,
                                      mixed_step(model_id, model_bytes, job_ids), api.url, headers))
            phases["mixed"] = stats.summary()
            print(f"{name} mixed: {json.dumps(phases['mixed']['endpoints'])}", flush=True)
        finally:
            api.stop()
            if any(summary["error_samples"] for summary in phases.values()):
                print(f"{name}: errors; the end of the API's log:\n"
                      f"{(workdir / 'api.log').read_text(errors='replace')[-4000:]}", flush=True)
    ceiling = phases["ceiling"]["endpoints"]["GET /bare/jobs/{id}"]
    poll = phases["poll"]["endpoints"]["GET /v1/jobs/{id}"]
    return {
        "deployment": name, "api_processes": processes, "clients": args.clients,
        "job_json_bytes": len(bare_body), "phases": phases,
        "poll_to_ceiling": round(poll["throughput_per_s"] / ceiling["throughput_per_s"], 3),
        "errors": sum(e["errors"] for p in phases.values() for e in p["endpoints"].values()),
    }


# ----------------------------------------------------------------------------------------------------------------
# A 2 GB upload and the API process's memory
# ----------------------------------------------------------------------------------------------------------------


def big_upload(gigabytes: float, workdir: Path) -> dict[str, Any]:
    """Stream `gigabytes` of bytes as one multipart file part to POST /v1/models and sample the RSS of the API
    process all along. The bytes are not a model, so the answer is a 415 after the whole file was received,
    hashed and stored to a temp file (then removed): the body is streamed end to end either way."""
    import psutil

    total = int(gigabytes * 1024**3)
    chunk = os.urandom(1 << 20)
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < total:
            piece = chunk[: min(len(chunk), total - sent)]
            sent += len(piece)
            yield piece
        yield tail

    with deployment("embedded", workdir) as env:
        env["DEEPOPT_MAX_UPLOAD_BYTES"] = str(total + (1 << 20))
        subprocess.run([sys.executable, "-m", "app.core.migrate"], env=env, cwd=ROOT, check=True)
        api = start(uvicorn_command("app.main:app", free_port(), 1), env, workdir / "api-upload.log", "/healthz")
        try:
            process = psutil.Process(api.proc.pid)
            baseline = process.memory_info().rss
            peak = [baseline]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    try:
                        peak[0] = max(peak[0], process.memory_info().rss)
                    except psutil.Error:
                        return
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            length = len(head) + total + len(tail)
            response = httpx.post(f"{api.url}/v1/models", content=body(), timeout=600, headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)})
            seconds = time.monotonic() - started
            done.set()
            sampler.join()
            leftovers = [p.name for p in (Path(env["DEEPOPT_DATA_DIR"]) / "blobs").rglob("*") if p.is_file()]
        finally:
            api.stop()
    return {
        "bytes": total, "status": response.status_code, "code": response.json().get("code"),
        "seconds": round(seconds, 1), "mb_per_s": round(total / 1024**2 / seconds, 1),
        "rss_baseline_mb": round(baseline / 1024**2, 1), "rss_peak_mb": round(peak[0] / 1024**2, 1),
        "rss_growth_mb": round((peak[0] - baseline) / 1024**2, 1), "files_left": len(leftovers),
    }


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# API load benchmark",
        "",
        f"{results['clients']} concurrent async httpx clients on loopback, each phase at most "
        f"{results['seconds']} s / {results['max_requests']} requests, load generator on the same machine "
        f"({results['cpus']} CPUs). `ceiling` is a bare FastAPI endpoint returning the polled job's JSON "
        "(same uvicorn, same number of processes); `poll` is GET /v1/jobs/{id} of a finished job with its "
        "artifacts and benchmarks, authenticated with an issued key; `mixed` is 80% polls, 15% job submissions "
        "and 5% model uploads.",
        "",
        "| deployment | API processes | phase | endpoint | requests | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        for phase, summary in run["phases"].items():
            for endpoint, row in summary["endpoints"].items():
                lines.append(f"| {run['deployment']} | {run['api_processes']} | {phase} | `{endpoint}` | "
                             f"{row['requests']} | {row['throughput_per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
                             f"{row['errors']} |")
    lines += ["", "| deployment | GET /v1/jobs/{id} / ceiling | target | errors |", "|---|---|---|---|"]
    for run in results["runs"]:
        verdict = "met" if run["poll_to_ceiling"] >= RATIO_TARGET else "missed"
        lines.append(f"| {run['deployment']} | {run['poll_to_ceiling']:.2f}x | >= {RATIO_TARGET}x: {verdict} | "
                     f"{run['errors']} |")
    upload = results.get("upload")
    if upload:
        lines += ["", f"A {upload['bytes'] / 1024**3:.1f} GiB upload streamed to POST /v1/models: answered "
                  f"{upload['status']} (`{upload['code']}`: not a model) after {upload['seconds']} s "
                  f"({upload['mb_per_s']} MiB/s); the API process's RSS went from {upload['rss_baseline_mb']} "
                  f"to at most {upload['rss_peak_mb']} MiB (+{upload['rss_growth_mb']} MiB); files left behind: "
                  f"{upload['files_left']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=12.0, help="the time bound of each phase")
    parser.add_argument("--max-requests", type=int, default=20000, help="the count bound of each phase")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of the ceiling and poll phases")
    parser.add_argument("--upload-gb", type=float, default=2.0, help="0 skips the big upload")
    parser.add_argument("--only", choices=["embedded", "postgres_redis"], default=None)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "max_requests": args.max_requests,
                               "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="deepopt-load-") as scratch:
        for name, processes in (("embedded", 1), ("postgres_redis", 2)):
            if args.only and args.only != name:
                continue
            workdir = Path(scratch) / name
            workdir.mkdir()
            results["runs"].append(run_deployment(name, processes, args, workdir))
        if args.upload_gb > 0:
            workdir = Path(scratch) / "upload"
            workdir.mkdir()
            results["upload"] = big_upload(args.upload_gb, workdir)
            print(f"upload: {json.dumps(results['upload'])}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "load.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
