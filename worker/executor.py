"""Run one job: claim it, run the core pipeline in a child process, heartbeat, persist the results.

The child process (`python -m deepopt_core.cli run request.json`, supervised by :mod:`worker.child`) does all the
model work, so a cancel or a time limit can stop it at once, and a crash in native code cannot take the worker
down. This process keeps the job row current (:mod:`worker.rows`): heartbeat, progress, stage, and the final
status, always guarded by `worker_id` so that a job the reaper took away (because this worker looked dead) is
never finished twice. The trials of an `auto` pass
go out to the other workers from this same loop (:mod:`worker.dispatch`), so they live and end with the job.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.notify import notify_job
from app.db.models import Artifact, Benchmark, Dataset, Job, Model, utcnow
from app.services.histograms import JOB_DURATION, PASS_DURATION, observe
from app.storage import Storage, copy_to, make_storage
from deepopt_core.protocol import RunData, RunRequest, write_message
from deepopt_core.sandbox import child_output
from deepopt_core.specs import ModelInfo
from worker.child import ChildState, supervise
from worker.dispatch import TrialDispatcher
from worker.identity import claim_identity
from worker.presence import CURRENT, beat
from worker.rows import Verdict, beat_job, claim, finish

log = logging.getLogger("deepopt.executor")

MODEL_FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt", "torch_export": "model.pt2", "hf": "model.hf"}
MAX_RESULT_BYTES = 64 * 1024**2  # what a child may hand back as its result description (not its artifacts)
DATASET_ROLES = {"calibration": "calibration_dataset_id", "eval": "eval_dataset_id", "train": "train_dataset_id"}


def prepare(job: Job, model: Model, datasets: dict[str, Dataset | None], storage: Storage,
            workdir: Path, extra_models: list[Model] | None = None) -> tuple[Path, RunRequest]:
    """Lay out the child's inputs and write its request; returns the request's path and the request.
    `extra_models` are the other uploaded models the passes name by id (a distillation's student or teacher)."""
    inputs = workdir / "inputs"
    inputs.mkdir(parents=True)
    model_path = copy_to(storage, model.storage_key, inputs / MODEL_FILENAMES.get(model.format, "model.bin"))
    extra: dict[str, Path] = {}
    for other in extra_models or []:
        folder = inputs / "models" / other.id
        folder.mkdir(parents=True, exist_ok=True)
        extra[other.id] = copy_to(storage, other.storage_key, folder / MODEL_FILENAMES.get(other.format, "model.bin"))
    data = RunData(**{role: copy_to(storage, dataset.storage_key, inputs / f"{role}.{dataset.format}")
                      for role, dataset in datasets.items() if dataset is not None})
    spec = job.spec
    auto = any(p.get("type") == "auto" for p in spec["passes"])
    request = RunRequest(
        model=model_path, model_info=stored_info(model), model_format=model.format,
        model_name=Path(model.filename).stem.split(".")[0] or "model", passes=spec["passes"], data=data,
        outputs=spec.get("outputs"), device=spec.get("device") or "cpu", benchmark=spec.get("benchmark"),
        workdir=workdir / "out", extra_models=extra,
        # The search's trials go out to the workers through this folder (worker.dispatch).
        trial_dispatch=workdir / "trials" if auto else None,
    )  # fmt: skip
    (workdir / "out").mkdir()
    return write_message(workdir / "request.json", request), request


def stored_info(model: Model) -> ModelInfo | None:
    """The model's inspection stored at upload, which the child then need not repeat; None for one this version
    no longer reads (an upload from before a change of the schema: the child inspects the model again)."""
    try:
        return ModelInfo.model_validate(model.info)
    except ValidationError as exc:
        log.warning("model %s: its stored inspection does not validate (%s); the job inspects it again", model.id,
                    exc.errors()[0]["msg"])
        return None


def _named_models(spec: dict[str, Any]) -> list[str]:
    """Ids of other uploaded models a stored pass spec names (`{"student": {"model_id": ...}}`)."""
    return [ref["model_id"] for key in ("student", "teacher")
            if isinstance(ref := spec.get(key), dict) and isinstance(ref.get("model_id"), str)]


def execute_job(job_id: str) -> str:
    """Claim and run job `job_id`. Returns what happened: skipped, succeeded, failed, cancelled or lost."""
    settings = get_settings()
    worker_id = claim_identity()
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
        request_path, request = prepare(job, model, datasets, storage, workdir, extra_models)
        if request.trial_dispatch is not None:
            dispatcher = TrialDispatcher(job_id=job_id, attempt=attempt, owner_id=worker_id, queue=job.queue,
                                         folder=request.trial_dispatch, storage=storage, settings=settings)
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
    for pass_type, seconds in state.pass_seconds.items():
        # Only the job's own pass types (and the export a plan adds): a child cannot invent labels.
        if pass_type in pass_types or pass_type == "export":
            observe(PASS_DURATION, pass_type, seconds)


def _run_child(job_id: str, worker_id: str, request_path: Path, workdir: Path, settings: Settings,
               state: ChildState | None = None, dispatcher: TrialDispatcher | None = None) -> str:
    """Run the job's child, beating the row; "done" when it finished, else what the row now says."""

    def beat_row(state: ChildState) -> Verdict:
        return beat_job(job_id, worker_id, progress=min(state.progress, 0.99), stage=state.stage,
                        metrics=state.metrics)

    ended = supervise(["run", str(request_path)], workdir, settings, label=f"job {job_id}", beat=beat_row,
                      poll=dispatcher.poll if dispatcher is not None else None, state=state)
    if ended.how == "lost":
        log.warning("job %s: this worker no longer owns it; stopping", job_id)
        return "lost"
    if ended.how == "cancelled":
        finish(job_id, worker_id, status="cancelled", stage="cancelled")
        return "cancelled"
    if ended.finished:
        return "done"
    code, message = ended.failure("job", "optimization process")
    finish(job_id, worker_id, status="failed", error_code=code, error_message=message[:4000])
    return "failed"


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
