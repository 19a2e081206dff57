"""Job creation, validation against the stored model facts, enqueueing and cancellation."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload
from sqlalchemy.orm.attributes import set_committed_value

from app.api.problems import FieldProblem, ProblemError
from app.core.broker import send_run_job
from app.core.config import get_settings
from app.core.notify import notify_job
from app.db.models import Artifact, Benchmark, Dataset, IdempotencyKey, Job, Model, WebhookDelivery, utcnow
from app.schemas import JobCreate
from app.services.keys import check_job_quota
from deepopt_core.passes.base import SubmitContext, check_pass, referenced_models
from deepopt_core.planning import PlanError, default_outputs, plan

log = logging.getLogger("deepopt.jobs")
DATASET_FIELDS = ("calibration_dataset_id", "eval_dataset_id", "train_dataset_id")
# Query options that read jobs without their artifacts and benchmarks (the relationships load eagerly by default):
# a conditional GET answered 304 needs only the job rows; `load_children` reads the rest when a body is sent.
WITHOUT_CHILDREN = (lazyload(Job.artifacts), lazyload(Job.benchmarks))


def _request_hash(body: JobCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def validate_job(session: Session, tenant: str, body: JobCreate) -> tuple[Model, dict[str, Dataset | None]]:
    """Check everything that can be checked before running: the model and datasets exist for this tenant,
    the pipeline can run on this model's format, datasets fit the model's inputs, each pass's own checks."""
    problems: list[FieldProblem] = []
    model = session.get(Model, body.model_id)
    if model is None or model.tenant != tenant:
        raise ProblemError(
            422, "model_id: no such model", code="unknown_model",
            errors=[FieldProblem(field="model_id", message="no such model", pointer="#/model_id")],
        )
    datasets: dict[str, Dataset | None] = {}
    for field in DATASET_FIELDS:
        dataset_id = getattr(body, field)
        dataset = session.get(Dataset, dataset_id) if dataset_id else None
        if dataset_id and (dataset is None or dataset.tenant != tenant):
            problems.append(FieldProblem(field=field, message="no such dataset", pointer=f"#/{field}"))
        datasets[field] = dataset

    try:
        plan(model.format, list(body.passes), list(body.outputs) if body.outputs else None,
             model.info.get("details"))
    except PlanError as exc:
        for p in exc.problems:
            loc = ".".join(str(x) for x in p.loc)
            problems.append(FieldProblem(field=loc, message=p.message, pointer="#/" + loc.replace(".", "/")))

    from deepopt_core.datasets import check_dataset_for_model

    # Text (.jsonl) too: a Hugging Face model without a tokenizer cannot read it, and the job would fail later.
    for field, dataset in datasets.items():
        if dataset is not None:
            for message in check_dataset_for_model(_dataset_info(dataset), _model_info(model)):
                problems.append(FieldProblem(field=field, message=message, pointer=f"#/{field}"))

    context = SubmitContext(
        model=model.info,
        # Other models the passes name (a distillation's student or teacher); one missing here is "no such model".
        models={m.id: m.info for m in _referenced(session, tenant, body)},
        calibration=_info_or_none(datasets["calibration_dataset_id"]),
        eval=_info_or_none(datasets["eval_dataset_id"]),
        train=_info_or_none(datasets["train_dataset_id"]),
        outputs=list(body.outputs) if body.outputs else default_outputs(model.format, list(body.passes)),
    )
    for index, spec in enumerate(body.passes):
        for location, message in check_pass(spec, context):
            path = ".".join(str(x) for x in ("passes", index, *location))
            problems.append(FieldProblem(field=path, message=message, pointer="#/" + path.replace(".", "/")))

    if body.callback_url is not None:
        from app.services.webhooks import check_callback_url

        refused = check_callback_url(body.callback_url, get_settings().webhook_allow_private)
        if refused:
            problems.append(FieldProblem(field="callback_url", message=refused, pointer="#/callback_url"))

    unknown_shape = [t["name"] for t in model.info.get("inputs", []) if t.get("shape") is None]
    if unknown_shape and not (body.eval_dataset_id or body.calibration_dataset_id):
        problems.append(
            FieldProblem(
                field="eval_dataset_id",
                message=f"the model does not record the shapes of inputs {unknown_shape}; "
                "give an eval or calibration dataset to run and benchmark it",
                pointer="#/eval_dataset_id",
            )
        )
    if problems:
        raise ProblemError(
            422, "; ".join(f"{p.field}: {p.message}" for p in problems[:5]), code="invalid_job", errors=problems
        )
    return model, datasets


def _referenced(session: Session, tenant: str, body: JobCreate) -> list[Model]:
    ids = {model_id for spec in body.passes for model_id in referenced_models(spec)}
    if not ids:
        return []
    return list(session.scalars(select(Model).where(Model.id.in_(ids), Model.tenant == tenant,
                                                    Model.deleted_at.is_(None))))


def _info_or_none(dataset: Dataset | None) -> dict[str, Any] | None:
    return dataset.info if dataset is not None else None


def _model_info(model: Model) -> Any:
    from deepopt_core.specs import ModelInfo

    return ModelInfo.model_validate(model.info)


def _dataset_info(dataset: Dataset) -> Any:
    from deepopt_core.specs import DatasetInfo

    return DatasetInfo.model_validate(dataset.info)


def create_job(*, session: Session, tenant: str, body: JobCreate, idempotency_key: str | None) -> tuple[Job, bool]:
    """Create and enqueue a job; with an idempotency key seen before, return that job. Returns (job, created)."""
    request_hash = _request_hash(body)
    if idempotency_key:
        existing = _job_for_key(session, tenant, idempotency_key, request_hash)
        if existing is not None:
            return existing, False

    validate_job(session, tenant, body)
    check_job_quota(session, tenant, get_settings().tenant_max_active_jobs)
    queue = "gpu" if body.device == "cuda" else "cpu"
    job = Job(
        tenant=tenant, model_id=body.model_id, status="queued", queue=queue,
        spec=body.model_dump(mode="json"), enqueued_at=utcnow(),
    )
    session.add(job)
    session.flush()
    if body.callback_url:
        session.add(WebhookDelivery(job_id=job.id, tenant=tenant, url=body.callback_url))
    if idempotency_key:
        session.add(IdempotencyKey(tenant=tenant, key=idempotency_key, request_sha256=request_hash, job_id=job.id))
    try:
        session.commit()
    except IntegrityError:
        # Another request with the same key won the race: answer with its job.
        session.rollback()
        existing = _job_for_key(session, tenant, idempotency_key or "", request_hash)
        if existing is None:
            raise
        return existing, False
    enqueue(job)
    return job, True


def _job_for_key(session: Session, tenant: str, key: str, request_hash: str) -> Job | None:
    row = session.get(IdempotencyKey, (tenant, key))
    if row is None:
        return None
    if row.request_sha256 != request_hash:
        raise ProblemError(
            422, "Idempotency-Key was already used with a different request body", code="idempotency_mismatch",
            errors=[FieldProblem(field="Idempotency-Key", message="reused with a different body")],
        )
    return session.get(Job, row.job_id)


def enqueue(job: Job) -> None:
    """Send the job's task. If the broker is down the job stays queued and the reaper re-sends it later."""
    try:
        send_run_job(job.id, job.queue)
    except Exception:
        log.exception("could not enqueue job %s now; the reaper will re-send it", job.id)


def cancel_job(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one is flagged and its worker stops it."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", finished_at=now, stage="cancelled", cancel_requested=True,
                version=Job.version + 1)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(
            update(Job).where(Job.id == job.id, Job.status == "running").values(cancel_requested=True)
        )
    session.commit()
    notify_job(job.id)
    session.refresh(job)
    if job.status not in ("queued", "running", "cancelled") and not job.cancel_requested:
        raise ProblemError(409, f"the job already ended: {job.status}", code="job_finished")
    return job


def active_jobs_for_model(session: Session, model_id: str) -> int:
    return len(
        session.scalars(
            select(Job.id).where(Job.model_id == model_id, Job.status.in_(("queued", "running")))
        ).all()
    )


def load_children(session: Session, jobs: Sequence[Job]) -> None:
    """Set the artifacts and benchmarks of jobs read with `WITHOUT_CHILDREN`, in two queries for all of them."""
    if not jobs:
        return
    ids = [job.id for job in jobs]
    artifacts: dict[str, list[Artifact]] = {job_id: [] for job_id in ids}
    benchmarks: dict[str, list[Benchmark]] = {job_id: [] for job_id in ids}
    for artifact in session.scalars(select(Artifact).where(Artifact.job_id.in_(ids))
                                    .order_by(Artifact.created_at)):
        artifacts[artifact.job_id].append(artifact)
    for benchmark in session.scalars(select(Benchmark).where(Benchmark.job_id.in_(ids))
                                     .order_by(Benchmark.position)):
        benchmarks[benchmark.job_id].append(benchmark)
    for job in jobs:
        set_committed_value(job, "artifacts", artifacts[job.id])
        set_committed_value(job, "benchmarks", benchmarks[job.id])
