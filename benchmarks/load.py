"""Load benchmark of the API on loopback (`make bench-load`): writes benchmarks/results/load.{json,md}.

For each deployment (the embedded default: SQLite + filesystem broker; PostgreSQL + Redis), each with ONE API
process, it starts the API, issues a tenant key (`python -m app.keys create`), runs one real job with a worker (so
the polled job has artifacts and benchmarks), submits 60 more jobs (they stay queued: no worker runs during the
load phases, and what is measured is the API alone), and drives it with wrk (1 thread, 32 connections; a compiled
driver, so that the load generator is not the bottleneck), in alternating rounds against a bare FastAPI app (same
uvicorn settings, one process) that returns the same bodies:

1. `poll`: GET /v1/jobs/{id} of the finished job, authenticated, against GET /bare/jobs/{id} (the job's own JSON);
2. `list`: GET /v1/jobs?limit=50 against GET /bare/jobs?limit=50 (the page's own JSON);
3. `not_modified`: GET /v1/jobs/{id} with the job's `ETag` in `If-None-Match` (answered 304), on its own;
4. `mixed`: job submissions, polls and model uploads, mixed (async httpx clients: it checks errors, not speed);
5. `events`: 1,000 concurrent event streams (GET /v1/jobs/{id}/events of queued jobs, from a separate process on
   raw asyncio sockets), held open, with the API process's RSS before, while open and after.

A ceiling counts as plausible when wrk used well under a core (`WRK_CPU_LIMIT`) while the bare server used most
of one: then the server, not the driver, set the rate. Then, on the embedded deployment, a 2 GB upload streamed to
POST /v1/models while the API process's RSS is sampled.

    python -m benchmarks.load [--connections 32] [--seconds 8] [--rounds 3] [--streams 1000] [--upload-gb 2]
                              [--only embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
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
# The targets of issue 14, as ratios to the bare app in the same run: req/s of GET /v1/jobs/{id} and of
# GET /v1/jobs?limit=50, and the p99 of GET /v1/jobs/{id} at most so many times the bare one's.
POLL_RATIO_TARGET = 0.5
POLL_P99_TARGET = 3.0
LIST_RATIO_TARGET = 0.3
WRK_CPU_LIMIT = 0.5  # cores: above this, the driver may be what limits the ceiling
LIST_JOBS = 60

# ----------------------------------------------------------------------------------------------------------------
# The ceiling: a bare FastAPI app that returns the polled job's body and the listed page's, read from files
# ----------------------------------------------------------------------------------------------------------------


def _bare_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    body = json.loads(Path(os.environ["DEEPOPT_BENCH_BODY"]).read_text())
    page = json.loads(Path(os.environ["DEEPOPT_BENCH_PAGE"]).read_text())

    @app.get("/bare/jobs/{job_id}")
    def bare_job(job_id: str) -> dict[str, Any]:
        return {**body, "id": job_id}

    @app.get("/bare/jobs")
    def bare_jobs(limit: int = 50) -> dict[str, Any]:
        return {**page, "items": page["items"][:limit]}

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
# wrk: the throughput driver
# ----------------------------------------------------------------------------------------------------------------

# wrk's `done` hook writes its summary as one JSON line (latencies in microseconds).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, "non_2xx_3xx": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def find_wrk() -> str:
    """wrk (Debian's `wrk` package: `apt-get install wrk`); `make bench-load` installs it when it is missing."""
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("benchmarks.load needs wrk on PATH: `apt-get install wrk` (Debian/Ubuntu) or "
                         "https://github.com/wg/wrk; `make bench-load` installs it with apt-get")
    return found


def process_cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int, server_pid: int,
        script: Path) -> dict[str, Any]:
    """One wrk run (1 thread): req/s, p50/p99, errors, and the CPU wrk and the server used (in cores)."""
    command = [find_wrk(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    server_before = process_cpu_s(server_pid)
    started = time.monotonic()
    proc = subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}{proc.stderr.read().decode() if proc.stderr else ''}")
    summary = json.loads(out.strip().splitlines()[-1])
    errors = sum(summary[k] for k in ("non_2xx_3xx", "connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "requests": summary["requests"], "seconds": round(summary["duration_us"] / 1e6, 2),
        "throughput_per_s": round(summary["requests"] / (summary["duration_us"] / 1e6), 1),
        "p50_ms": round(summary["p50_us"] / 1000, 2), "p99_ms": round(summary["p99_us"] / 1000, 2),
        "max_ms": round(summary["max_us"] / 1000, 2), "errors": errors,
        "error_detail": {k: summary[k] for k in ("non_2xx_3xx", "connect_errors", "read_errors", "write_errors",
                                                 "timeouts") if summary[k]},
        "wrk_cpu_cores": round((usage.ru_utime + usage.ru_stime) / wall, 2),
        "server_cpu_cores": round((process_cpu_s(server_pid) - server_before) / wall, 2),
    }


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one target together: the sum of requests over the sum of time; the median of the rounds'
    percentiles (wrk reports percentiles per run, not its samples)."""
    requests = sum(r["requests"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    return {
        "requests": requests, "seconds": round(seconds, 2), "throughput_per_s": round(requests / seconds, 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 2),
        "p99_ms_worst_round": max(r["p99_ms"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "wrk_cpu_cores": max(r["wrk_cpu_cores"] for r in rounds),
        "server_cpu_cores": round(statistics.median(r["server_cpu_cores"] for r in rounds), 2),
        "rounds": [r["throughput_per_s"] for r in rounds],
    }


def compare(targets: dict[str, tuple[str, int, dict[str, str]]], args: argparse.Namespace,
            script: Path) -> dict[str, Any]:
    """Alternating rounds of wrk on each target (url, server pid, headers), so that a change in the load of the
    machine weighs on all alike; after a short warm-up of each."""
    for url, pid, headers in targets.values():
        wrk(url, headers, 1, args.connections, pid, script)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(args.rounds):
        for name, (url, pid, headers) in targets.items():
            rounds[name].append(wrk(url, headers, args.seconds, args.connections, pid, script))
    return {name: merge_rounds(runs) for name, runs in rounds.items()}


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


def submit_queued(api: Server, headers: dict[str, str], model_id: str, count: int) -> list[str]:
    """Jobs that stay queued (no worker runs now): the listed page, and the jobs the event streams follow."""
    with httpx.Client(base_url=api.url, headers=headers, timeout=60) as http:
        ids = []
        for _ in range(count):
            response = http.post("/v1/jobs", json={"model_id": model_id, "passes": JOB_PASSES})
            response.raise_for_status()
            ids.append(str(response.json()["id"]))
    return ids


def rss_mb(pid: int) -> float:
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 1024**2, 1)


def event_streams(api: Server, headers: dict[str, str], job_ids: list[str], poll_path: str,
                  args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """`args.streams` concurrent event streams from a separate process (benchmarks/sse_clients.py), with the
    API process's RSS before, at its highest while they are open, and after they closed; and how long a few
    polls take while they are open."""
    pid = api.proc.pid
    port = api.url.rsplit(":", 1)[1]
    key = headers["Authorization"].removeprefix("Bearer ")
    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = process_cpu_s(pid)
    started = time.monotonic()
    command = [sys.executable, "-m", "benchmarks.sse_clients", "--port", port, "--key", key,
               "--streams", str(args.streams), "--hold", str(args.hold), *job_ids]
    with open(workdir / "sse-clients.log", "ab") as log:
        driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        assert driver.stdout is not None
        first = json.loads(driver.stdout.readline() or "{}")  # all streams opened (or failed)
        open_rss = rss_mb(pid)
        polls = []
        with httpx.Client(base_url=api.url, headers=headers, timeout=60) as http:
            for _ in range(20):
                poll_started = time.perf_counter()
                status = http.get(poll_path).status_code
                polls.append((time.perf_counter() - poll_started, status))
                time.sleep(0.1)
        last = json.loads(driver.stdout.readline() or "{}")
        driver.wait(timeout=120)
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    time.sleep(2)  # the server closes its side
    latencies = sorted(latency for latency, _ in polls)
    return {
        **{k: v for k, v in last.items() if k != "phase"},
        "opened_before_hold": first.get("first_event"),
        "rss_before_mb": before, "rss_all_open_mb": open_rss, "rss_peak_mb": peak[0], "rss_after_mb": rss_mb(pid),
        "rss_growth_mb": round(peak[0] - before, 1),
        "rss_per_stream_kb": round((peak[0] - before) * 1024 / max(args.streams, 1), 1),
        "api_cpu_cores": round((process_cpu_s(pid) - cpu_before) / seconds, 2),
        "poll_while_open_p50_ms": round(1000 * statistics.median(latencies), 1),
        "poll_while_open_max_ms": round(1000 * latencies[-1], 1),
        "poll_while_open_errors": sum(1 for _, status in polls if status != 200),
    }


def run_deployment(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tests.app.conftest import build_tiny_onnx

    script = workdir / "summary.lua"
    script.write_text(WRK_SCRIPT)
    model_bytes = build_tiny_onnx(workdir / "tiny.onnx").read_bytes()
    results: dict[str, Any] = {"deployment": name, "api_processes": 1, "connections": args.connections}
    with deployment(name, workdir) as env:
        subprocess.run([sys.executable, "-m", "app.core.migrate"], env=env, cwd=ROOT, check=True)
        created = subprocess.run([sys.executable, "-m", "app.keys", "create", "--tenant", "bench"], env=env,
                                 cwd=ROOT, check=True, capture_output=True, text=True)
        headers = {"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}
        api = start(uvicorn_command("app.main:app", free_port(), 1), env, workdir / "api.log", "/healthz")
        try:
            model_id, job_id, body = prepare_job(env, api, headers, workdir, model_bytes)
            queued = submit_queued(api, headers, model_id, LIST_JOBS)
            page = httpx.get(f"{api.url}/v1/jobs?limit=50", headers=headers).json()
            (workdir / "job.json").write_text(json.dumps(body))
            (workdir / "page.json").write_text(json.dumps(page))
            bare = start(uvicorn_command("benchmarks.load:bare_app", free_port(), 1),
                         {**env, "DEEPOPT_BENCH_BODY": str(workdir / "job.json"),
                          "DEEPOPT_BENCH_PAGE": str(workdir / "page.json")}, workdir / "bare.log", "/bare/jobs")
            try:
                results["job_json_bytes"] = len(httpx.get(f"{bare.url}/bare/jobs/{job_id}").content)
                results["page_json_bytes"] = len(httpx.get(f"{bare.url}/bare/jobs?limit=50").content)
                results["page_jobs"] = len(page["items"])
                pid, bare_pid = api.proc.pid, bare.proc.pid
                results["poll"] = compare({
                    "bare": (f"{bare.url}/bare/jobs/{job_id}", bare_pid, {}),
                    "api": (f"{api.url}/v1/jobs/{job_id}", pid, headers),
                }, args, script)
                results["list"] = compare({
                    "bare": (f"{bare.url}/bare/jobs?limit=50", bare_pid, {}),
                    "api": (f"{api.url}/v1/jobs?limit=50", pid, headers),
                }, args, script)
            finally:
                bare.stop()
            etag = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=headers).headers["ETag"]
            check = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers={**headers, "If-None-Match": etag})
            if check.status_code != 304:
                raise RuntimeError(f"If-None-Match {etag} answered {check.status_code}, not 304")
            results["not_modified"] = merge_rounds([wrk(f"{api.url}/v1/jobs/{job_id}",
                                                         {**headers, "If-None-Match": etag}, args.seconds,
                                                         args.connections, pid, script)])
            for phase in ("poll", "list"):
                print(f"{name} {phase}: {json.dumps(results[phase])}", flush=True)
            print(f"{name} not_modified: {json.dumps(results['not_modified'])}", flush=True)
            job_ids = [job_id]
            stats = asyncio.run(drive(args.connections, args.seconds, args.max_requests,
                                      mixed_step(model_id, model_bytes, job_ids), api.url, headers))
            results["mixed"] = stats.summary()
            print(f"{name} mixed: {json.dumps(results['mixed']['endpoints'])}", flush=True)
            if args.streams:
                results["events"] = event_streams(api, headers, queued, f"/v1/jobs/{job_id}", args, workdir)
                print(f"{name} events: {json.dumps(results['events'])}", flush=True)
        finally:
            api.stop()
    verdicts(results)
    if results["errors"]:
        print(f"{name}: errors; the end of the API's log:\n"
              f"{(workdir / 'api.log').read_text(errors='replace')[-4000:]}", flush=True)
    return results


def verdicts(results: dict[str, Any]) -> None:
    """Ratios to the bare app, whether each ceiling was the server's, the targets, and all errors counted."""
    poll, listing = results["poll"], results["list"]
    results["poll_ratio"] = round(poll["api"]["throughput_per_s"] / poll["bare"]["throughput_per_s"], 3)
    results["poll_p99_ratio"] = round(poll["api"]["p99_ms"] / poll["bare"]["p99_ms"], 2)
    results["list_ratio"] = round(listing["api"]["throughput_per_s"] / listing["bare"]["throughput_per_s"], 3)
    results["ceiling_plausible"] = all(
        phase["bare"]["wrk_cpu_cores"] < WRK_CPU_LIMIT and phase["bare"]["server_cpu_cores"] > 0.7
        for phase in (poll, listing))
    events = results.get("events", {})
    results["errors"] = (sum(phase[side]["errors"] for phase in (poll, listing) for side in ("bare", "api"))
                         + results["not_modified"]["errors"]
                         + sum(e["errors"] for e in results["mixed"]["endpoints"].values())
                         + events.get("errors", 0) + events.get("poll_while_open_errors", 0))
    results["targets"] = {
        "poll_ratio": results["poll_ratio"] >= POLL_RATIO_TARGET,
        "poll_p99_ratio": results["poll_p99_ratio"] <= POLL_P99_TARGET,
        "list_ratio": results["list_ratio"] >= LIST_RATIO_TARGET,
        "events": bool(events) and events.get("errors") == 0 and events.get("open_at_end") == events.get("streams"),
        "no_errors": results["errors"] == 0,
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
        f"Commit `{results['commit']}`{' (with uncommitted changes)' if results['dirty'] else ''}, "
        f"{results['cpus']} CPUs, load average {results['load_average']} at the start. wrk "
        f"({results['wrk']}), 1 thread, {results['connections']} connections, on loopback; "
        f"{results['rounds']} alternating rounds of {results['seconds']} s per target. One API process per deployment "
        "(uvicorn, as `make api`), and a bare FastAPI app in the same uvicorn returning the same JSON (the polled "
        "job's, 50 listed jobs'). Every `/v1` request carries a key issued with `python -m app.keys`. p50/p99 are "
        "the medians of the rounds' own; `wrk CPU` and `server CPU` are in cores.",
        "",
        "| deployment | endpoint | req/s | ratio | p50 ms | p99 ms | p99 ratio | errors | wrk CPU | server CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        for phase, path, ratio, p99_ratio in (
            ("poll", "GET /v1/jobs/{id}", run["poll_ratio"], run["poll_p99_ratio"]),
            ("list", "GET /v1/jobs?limit=50", run["list_ratio"], None),
        ):
            bare, api = run[phase]["bare"], run[phase]["api"]
            lines.append(f"| {run['deployment']} | bare `{path.replace('/v1/', '/bare/')}` | "
                         f"{bare['throughput_per_s']} | | {bare['p50_ms']} | {bare['p99_ms']} | | {bare['errors']} | "
                         f"{bare['wrk_cpu_cores']} | {bare['server_cpu_cores']} |")
            lines.append(f"| | `{path}` | {api['throughput_per_s']} | **{ratio:.2f}x** | {api['p50_ms']} | "
                         f"{api['p99_ms']} | {f'{p99_ratio:.2f}x' if p99_ratio is not None else ''} | "
                         f"{api['errors']} | {api['wrk_cpu_cores']} | {api['server_cpu_cores']} |")
        nm = run["not_modified"]
        lines.append(f"| | `GET /v1/jobs/{{id}}` + `If-None-Match` (304) | {nm['throughput_per_s']} | | "
                     f"{nm['p50_ms']} | {nm['p99_ms']} | | {nm['errors']} | {nm['wrk_cpu_cores']} | "
                     f"{nm['server_cpu_cores']} |")
    lines += ["", "Bodies: the polled job (finished, with its artifact and benchmarks) "
              + ", ".join(f"{r['job_json_bytes']} bytes ({r['deployment']})" for r in results["runs"])
              + "; the page of 50 jobs (queued ones, without artifacts) "
              + ", ".join(f"{r['page_json_bytes']} bytes" for r in results["runs"]) + "."]
    lines += ["", "| deployment | poll ratio (>= 0.5) | poll p99 ratio (<= 3) | list ratio (>= 0.3) | "
              f"{results['streams']} event streams | errors | ceiling plausible |", "|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        targets = run["targets"]

        def mark(ok: bool) -> str:
            return "met" if ok else "**missed**"

        events = run.get("events", {})
        lines.append(
            f"| {run['deployment']} | {run['poll_ratio']:.2f}x {mark(targets['poll_ratio'])} | "
            f"{run['poll_p99_ratio']:.2f}x {mark(targets['poll_p99_ratio'])} | {run['list_ratio']:.2f}x "
            f"{mark(targets['list_ratio'])} | {events.get('open_at_end', 0)} held open, {events.get('errors', '-')} "
            f"errors: {mark(targets['events'])} | {run['errors']} | "
            f"{'yes' if run['ceiling_plausible'] else '**no**'} |")
    lines += ["", "Event streams (from a separate process on raw asyncio sockets, spread over the queued jobs, held "
              f"{results['hold']} s): the API process's RSS before, with all open, at its highest, after they closed; "
              "and GET /v1/jobs/{id} polled 20 times meanwhile.", "",
              "| deployment | opened | first event p50 / p99 ms | RSS before | all open | peak | after | growth per "
              "stream | API CPU | poll while open p50 / max ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        e = run.get("events")
        if not e:
            continue
        lines.append(f"| {run['deployment']} | {e['opened']} / {e['streams']} | {e['first_event_p50_ms']} / "
                     f"{e['first_event_p99_ms']} | {e['rss_before_mb']} MiB | {e['rss_all_open_mb']} MiB | "
                     f"{e['rss_peak_mb']} MiB (+{e['rss_growth_mb']}) | {e['rss_after_mb']} MiB | "
                     f"{e['rss_per_stream_kb']} KiB | {e['api_cpu_cores']} | {e['poll_while_open_p50_ms']} / "
                     f"{e['poll_while_open_max_ms']} |")
    lines += ["", "`mixed` (32 async httpx clients: 80% polls, 15% submissions, 5% model uploads; it checks errors "
              "under a mix, its rates are the client's):", "",
              "| deployment | endpoint | requests | req/s | p50 ms | p99 ms | errors |",
              "|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for endpoint, row in run["mixed"]["endpoints"].items():
            lines.append(f"| {run['deployment']} | `{endpoint}` | {row['requests']} | {row['throughput_per_s']} | "
                         f"{row['p50_ms']} | {row['p99_ms']} | {row['errors']} |")
    upload = results.get("upload")
    if upload:
        lines += ["", f"A {upload['bytes'] / 1024**3:.1f} GiB upload streamed to POST /v1/models: answered "
                  f"{upload['status']} (`{upload['code']}`: not a model) after {upload['seconds']} s "
                  f"({upload['mb_per_s']} MiB/s); the API process's RSS went from {upload['rss_baseline_mb']} "
                  f"to at most {upload['rss_peak_mb']} MiB (+{upload['rss_growth_mb']} MiB); files left behind: "
                  f"{upload['files_left']}."]
    return "\n".join(lines) + "\n"


def git_state() -> tuple[str, bool]:
    """The commit measured, and whether the tree had uncommitted changes to tracked files."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                            capture_output=True, text=True)
    return commit.stdout.strip() or "unknown", bool(status.stdout.strip())


def raise_open_files_limit() -> None:
    """Room for the event streams' sockets in the API process and the driver (children inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (and mixed-phase clients)")
    parser.add_argument("--seconds", type=float, default=8.0, help="the length of one wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the bare app and the API")
    parser.add_argument("--max-requests", type=int, default=20000, help="the count bound of the mixed phase")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent event streams; 0 skips them")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the event streams are held open")
    parser.add_argument("--upload-gb", type=float, default=2.0, help="0 skips the big upload")
    parser.add_argument("--only", choices=["embedded", "postgres_redis"], default=None)
    args = parser.parse_args(argv)
    wrk_version = subprocess.run([find_wrk(), "--version"], capture_output=True, text=True)
    raise_open_files_limit()
    commit, dirty = git_state()
    results: dict[str, Any] = {
        "commit": commit, "dirty": dirty, "wrk": (wrk_version.stdout or wrk_version.stderr).split("\n")[0].strip(),
        "connections": args.connections, "seconds": args.seconds, "rounds": args.rounds, "streams": args.streams,
        "hold": args.hold, "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
        "targets": {"poll_ratio": POLL_RATIO_TARGET, "poll_p99_ratio": POLL_P99_TARGET,
                    "list_ratio": LIST_RATIO_TARGET, "wrk_cpu_limit_cores": WRK_CPU_LIMIT},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="deepopt-load-") as scratch:
        for name in ("embedded", "postgres_redis"):
            if args.only and args.only != name:
                continue
            workdir = Path(scratch) / name
            workdir.mkdir()
            results["runs"].append(run_deployment(name, args, workdir))
        if args.upload_gb > 0:
            workdir = Path(scratch) / "upload"
            workdir.mkdir()
            results["upload"] = big_upload(args.upload_gb, workdir)
            print(f"upload: {json.dumps(results['upload'])}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "load.md").write_text(markdown(results))
    print(markdown(results))
    return 0 if all(all(run["targets"].values()) for run in results["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
