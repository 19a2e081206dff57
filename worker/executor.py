"""Run one job: claim it, run the core pipeline in a child process, heartbeat, persist the results.

The child process (`python -m deepopt_core.cli run request.json`) does all the model work, so a cancel or a
time limit can stop it at once, and a crash in native code cannot take the worker down. This process keeps
the job row current: heartbeat, progress, stage, and the final status, always guarded by `worker_id` so that a
job the reaper took away (because this worker looked dead) is never finished twice. The trials of an `auto` pass
go out to the other workers from this same loop (:mod:`worker.dispatch`), so they live and end with the job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, or_, select, update

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.notify import notify_job
from app.db.models import Artifact, Benchmark, Dataset, Job, Model, utcnow
from app.services.histograms import JOB_DURATION, PASS_DURATION, observe
from app.storage import Storage, copy_to, make_storage
from deepopt_core.protocol import Done, Failure, Progress, parse_event
from deepopt_core.sandbox import child_command, child_env, child_output, prepare_scratch
from worker.presence import CURRENT, beat

if TYPE_CHECKING:
    from worker.dispatch import TrialDispatcher

log = logging.getLogger("deepopt.executor")

# How running out of address space reads in the child's stderr (Python, C++, glibc, OpenBLAS).
# "failed to map segment": a shared library (libtorch) that cannot be mapped under the address-space limit.
OUT_OF_MEMORY = ("MemoryError", "bad_alloc", "Cannot allocate memory", "Memory allocation", "failed to map segment")
MODEL_FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt", "torch_export": "model.pt2", "hf": "model.hf"}
STAGE_WRITE_MIN_S = 0.5
MAX_RESULT_BYTES = 64 * 1024**2  # what a child may hand back as its result description (not its artifacts)
DATASET_ROLES = {"calibration": "calibration_dataset_id", "eval": "eval_dataset_id", "train": "train_dataset_id"}


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(job_id: str, worker_id: str, settings: Settings) -> bool:
    """Take the job if it is queued, or running with a stale heartbeat (its worker died). Atomic."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_s)
    with session_scope() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.cancel_requested.is_(False),
                or_(Job.status == "queued", (Job.status == "running") & (Job.heartbeat_at < stale_before)),
            )
            .values(
                status="running", worker_id=worker_id, heartbeat_at=now, attempts=Job.attempts + 1,
                progress=0.0, stage="starting", metrics=None, error_code=None, error_message=None,
                version=Job.version + 1,
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        session.execute(update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=now))
    notify_job(job_id)
    return True


def finish(job_id: str, worker_id: str, **values: Any) -> bool:
    """Set a terminal status, only while this worker still owns the job."""
    with session_scope() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(finished_at=utcnow(), version=Job.version + 1, **values)
        )
        done = bool(result.rowcount)  # type: ignore[attr-defined]
    if done:
        notify_job(job_id)
    return done


@dataclass
class ChildState:
    """What the child process reported on stdout."""

    progress: float = 0.0
    stage: str = "starting"
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: bool = False
    lines: list[str] = field(default_factory=list)
    # Seconds spent in each kind of stage (its first word: `prune`, `quantize`, `export`, `benchmark`, ...).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    _stage_kind: str | None = None
    _stage_since: float = 0.0

    def enter(self, stage: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        kind = stage.split(" ", 1)[0].split("/", 1)[0] if stage else ""
        if kind == self._stage_kind:
            return
        self.close_stage(now)
        self._stage_kind, self._stage_since = kind, now

    def close_stage(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._stage_kind:
            spent = now - self._stage_since
            self.stage_seconds[self._stage_kind] = self.stage_seconds.get(self._stage_kind, 0.0) + spent
        self._stage_kind = None


def _read_events(stream: Any, state: ChildState) -> None:
    for raw in iter(stream.readline, b""):
        event = parse_event(raw)
        if isinstance(event, Progress):
            state.progress = event.progress
            state.stage = (event.stage or state.stage)[:64]
            if event.metrics:
                state.metrics = event.metrics
            state.enter(state.stage)
        elif isinstance(event, Failure):
            state.error = {"code": event.code, "message": event.message}
        elif isinstance(event, Done):
            state.close_stage()
            state.done = True
        elif raw.strip():
            state.lines.append(raw.decode("utf-8", "replace").strip()[:2000])


def sandboxed(args: list[str], scratch: Path, settings: Settings) -> dict[str, Any]:
    """Popen keyword arguments that run `python -m deepopt_core.cli <args>` in the sandbox, confined to
    `scratch` (which holds the child's inputs), with the job memory limit."""
    prepare_scratch(scratch)
    return {
        "args": child_command(args, scratch=scratch, strict=settings.sandbox == "strict",
                              memory_limit=settings.job_memory_limit_bytes),
        "env": child_env(scratch), "cwd": scratch,
    }


def prepare(job: Job, model: Model, datasets: dict[str, Dataset | None], storage: Storage,
            workdir: Path, extra_models: list[Model] | None = None) -> Path:
    """Lay out the child's inputs and request file; returns the request path. `extra_models` are the other
    uploaded models the passes name by id (a distillation's student or teacher)."""
    inputs = workdir / "inputs"
    inputs.mkdir(parents=True)
    model_path = copy_to(storage, model.storage_key, inputs / MODEL_FILENAMES.get(model.format, "model.bin"))
    extra: dict[str, str] = {}
    for other in extra_models or []:
        folder = inputs / "models" / other.id
        folder.mkdir(parents=True, exist_ok=True)
        extra[other.id] = str(copy_to(storage, other.storage_key,
                                      folder / MODEL_FILENAMES.get(other.format, "model.bin")))
    data: dict[str, str | None] = {}
    for role, dataset in datasets.items():
        data[role] = (
            str(copy_to(storage, dataset.storage_key, inputs / f"{role}.{dataset.format}")) if dataset else None
        )
    spec = job.spec
    request = {
        "model": str(model_path),
        "model_format": model.format,
        "model_name": Path(model.filename).stem.split(".")[0] or "model",
        "passes": spec["passes"],
        "data": data,
        "outputs": spec.get("outputs"),
        "device": spec.get("device", "cpu"),
        "benchmark": spec.get("benchmark"),
        "workdir": str(workdir / "out"),
        "extra_models": extra,
    }
    if any(p.get("type") == "auto" for p in spec["passes"]):
        # The search's trials go out to the workers through this folder (worker.dispatch).
        request["trial_dispatch"] = str(workdir / "trials")
    (workdir / "out").mkdir()
    request_path = workdir / "request.json"
    request_path.write_text(json.dumps(request, indent=2))
    return request_path


def _named_models(spec: dict[str, Any]) -> list[str]:
    """Ids of other uploaded models a stored pass spec names (`{"student": {"model_id": ...}}`)."""
    return [ref["model_id"] for key in ("student", "teacher")
            if isinstance(ref := spec.get(key), dict) and isinstance(ref.get("model_id"), str)]


def execute_job(job_id: str) -> str:
    """Claim and run job `job_id`. Returns what happened: skipped, succeeded, failed, cancelled or lost."""
    settings = get_settings()
    worker_id = worker_identity()
    if not claim(job_id, worker_id, settings):
        log.info("job %s: nothing to claim (done, cancelled, or running elsewhere)", job_id)
        return "skipped"
    storage = make_storage(settings)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        model = session.get(Model, job.model_id)
        assert model is not None
        datasets = {
            role: session.get(Dataset, job.spec.get(field)) if job.spec.get(field) else None
            for role, field in DATASET_ROLES.items()
        }
        named = {i for spec in job.spec["passes"] for i in _named_models(spec)}
        extra_models = list(session.scalars(select(Model).where(Model.id.in_(named)))) if named else []
        attempt = job.attempts
        session.expunge_all()
    job_dir = settings.work_dir / job_id
    shutil.rmtree(job_dir, ignore_errors=True)  # leftovers of an earlier, dead attempt
    workdir = job_dir / f"attempt-{attempt}"
    state = ChildState()
    started = time.monotonic()
    CURRENT["job_id"] = job_id
    outcome = "failed"
    dispatcher: TrialDispatcher | None = None
    try:
        request_path = prepare(job, model, datasets, storage, workdir, extra_models)
        folder = json.loads(request_path.read_text()).get("trial_dispatch")
        if folder:
            from worker.dispatch import TrialDispatcher

            dispatcher = TrialDispatcher(job_id=job_id, attempt=attempt, owner_id=worker_id, queue=job.queue,
                                         folder=Path(folder), storage=storage, settings=settings)
        outcome = _run_child(job_id, worker_id, request_path, workdir, settings, state, dispatcher)
        if outcome == "done":
            outcome = _persist(job_id, worker_id, workdir, storage)
            if outcome == "succeeded":
                _observe_durations(job.spec, state, time.monotonic() - started)
        return outcome
    except Exception as exc:
        log.exception("job %s failed in the worker", job_id)
        finish(job_id, worker_id, status="failed", error_code="internal_error", error_message=str(exc)[:2000])
        return "failed"
    finally:
        if dispatcher is not None:
            dispatcher.close()
        shutil.rmtree(job_dir, ignore_errors=True)
        CURRENT["job_id"] = None
        try:
            beat(jobs_done_increment=1)
        except Exception:
            log.debug("worker heartbeat after job %s failed", job_id, exc_info=True)


def _observe_durations(spec: dict[str, Any], state: ChildState, run_seconds: float) -> None:
    """Job run time under each pass type of the job, and the time spent in each pass, for /metrics."""
    pass_types = list(dict.fromkeys(str(p.get("type")) for p in spec.get("passes", [])))
    for pass_type in pass_types:
        observe(JOB_DURATION, pass_type, run_seconds)
    for kind, seconds in state.stage_seconds.items():
        if kind in pass_types or kind == "export":
            observe(PASS_DURATION, kind, seconds)


def _run_child(job_id: str, worker_id: str, request_path: Path, workdir: Path, settings: Settings,
               state: ChildState | None = None, dispatcher: TrialDispatcher | None = None) -> str:
    stderr_path = workdir / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(stdout=subprocess.PIPE, stderr=stderr,
                                 **sandboxed(["run", str(request_path)], workdir, settings))
        state = state if state is not None else ChildState()
        reader = threading.Thread(target=_read_events, args=(child.stdout, state), daemon=True)
        reader.start()
        started = time.monotonic()
        next_beat = last_beat = 0.0
        written_stage = ""
        try:
            while True:
                returncode = child.poll()
                now = time.monotonic()
                if dispatcher is not None and returncode is None:
                    dispatcher.poll(now)
                # A new stage is written soon (event streams show it) without beating more than twice a second.
                stage_moved = state.stage != written_stage and now - last_beat >= STAGE_WRITE_MIN_S
                if returncode is None and now < next_beat and not stage_moved:
                    time.sleep(0.1)
                    continue
                if returncode is not None:
                    reader.join(timeout=5)
                    break
                next_beat, last_beat, written_stage = now + settings.heartbeat_interval_s, now, state.stage
                verdict = _heartbeat(job_id, worker_id, state)
                if verdict == "lost":
                    log.warning("job %s: this worker no longer owns it; stopping", job_id)
                    return "lost"
                if verdict == "cancel":
                    _stop(child)
                    finish(job_id, worker_id, status="cancelled", stage="cancelled")
                    return "cancelled"
                if now - started > settings.job_timeout_s:
                    _stop(child)
                    finish(job_id, worker_id, status="failed", error_code="timeout",
                           error_message=f"the job ran longer than {settings.job_timeout_s:.0f} s")
                    return "failed"
        finally:
            if child.poll() is None:
                _stop(child)
    if returncode == 0 and state.done:
        return "done"
    if state.error is not None:
        finish(job_id, worker_id, status="failed", error_code=str(state.error.get("code") or "pass_failed"),
               error_message=str(state.error.get("message") or "the pipeline failed")[:4000])
        return "failed"
    tail = stderr_path.read_text(errors="replace")[-2000:] if stderr_path.exists() else ""
    reason = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    if settings.job_memory_limit_bytes and (any(s in tail for s in OUT_OF_MEMORY) or returncode == -9):
        finish(job_id, worker_id, status="failed", error_code="memory_limit",
               error_message=f"the job needed more than the workers' memory limit of "
               f"{settings.job_memory_limit_bytes} bytes (DEEPOPT_JOB_MEMORY_LIMIT_BYTES); it ended with {reason}")
        return "failed"
    finish(job_id, worker_id, status="failed", error_code="internal_error",
           error_message=f"the optimization process ended with {reason}: {tail.strip()[-1500:]}")
    return "failed"


def _heartbeat(job_id: str, worker_id: str, state: ChildState) -> str:
    progress, stage, metrics = min(state.progress, 0.99), state.stage, state.metrics
    # The version (the id of event-stream events) moves only when something a client sees changed.
    moved = or_(Job.progress != progress, Job.stage.is_distinct_from(stage))
    try:
        with session_scope() as session:
            before = session.scalar(select(Job.version).where(Job.id == job_id))
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
                .values(heartbeat_at=utcnow(), progress=progress, stage=stage, metrics=metrics,
                        version=Job.version + case((moved, 1), else_=0))
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return "lost"
            cancel, after = session.execute(
                select(Job.cancel_requested, Job.version).where(Job.id == job_id)).one()
        if after != before:
            notify_job(job_id)
        return "cancel" if cancel else "ok"
    except Exception:
        # The database may be restarting; keep working and try again at the next beat.
        log.exception("job %s: heartbeat failed", job_id)
        return "ok"


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _persist(job_id: str, worker_id: str, workdir: Path, storage: Storage) -> str:
    """Store the files, then write artifacts, benchmarks and `succeeded` in one transaction."""
    from deepopt_core.result import Result

    out = workdir / "out"
    result_path = child_output(out / "result.json", out)
    if result_path.stat().st_size > MAX_RESULT_BYTES:
        raise ValueError(f"the job's result.json is larger than {MAX_RESULT_BYTES} bytes")
    result = Result.model_validate_json(result_path.read_text())
    # Only files the child wrote in its own folder: a path it names elsewhere (another tenant's blob) is refused.
    stored = [storage.put_file(child_output(a.path, out)) for a in result.artifacts]
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.worker_id != worker_id or job.status != "running":
            session.rollback()
            return "lost"
        artifacts = []
        for artifact, blob in zip(result.artifacts, stored, strict=True):
            row = Artifact(
                job_id=job_id, tenant=job.tenant, kind=artifact.kind, format=artifact.format,
                filename=artifact.filename[:255], size_bytes=blob.size_bytes, sha256=blob.sha256,
                storage_key=blob.key,
            )
            session.add(row)
            artifacts.append(row)
        session.flush()
        for position, bench in enumerate(result.benchmarks):
            session.add(
                Benchmark(
                    job_id=job_id, position=position,
                    artifact_id=artifacts[bench.artifact_index].id if bench.artifact_index is not None else None,
                    device=bench.device, size_bytes=bench.size_bytes, num_parameters=bench.num_parameters,
                    sparsity=bench.sparsity, latency_ms_p50=bench.latency_ms_p50,
                    latency_ms_p95=bench.latency_ms_p95, throughput_per_s=bench.throughput_per_s,
                    peak_memory_bytes=bench.peak_memory_bytes, metrics=bench.metrics,
                )
            )
        cancelled = bool(job.cancel_requested)
        guard = (Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
        if cancelled:
            # Asked to stop at the very end: honour the cancel and keep no outputs.
            session.rollback()
            finish(job_id, worker_id, status="cancelled", stage="cancelled")
            return "cancelled"
        done = session.execute(
            update(Job).where(*guard).values(
                status="succeeded", progress=1.0, stage="done", finished_at=utcnow(), version=Job.version + 1,
                result_info={"decisions": result.decisions, "warnings": result.warnings},
            )
        )
        if not done.rowcount:  # type: ignore[attr-defined]
            session.rollback()
            return "lost"
    notify_job(job_id)
    return "succeeded"
