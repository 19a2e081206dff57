"""Request and response bodies of the HTTP API v1."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from deepopt_core.specs import BenchmarkSettings, Device, OutputFormat, PassSpec, TensorInfo

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next page; null at the end.")


class ModelRead(BaseModel):
    id: str
    name: str
    format: str
    filename: str
    size_bytes: int
    sha256: str
    num_parameters: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    info: dict[str, Any] = Field(..., description="Everything inspection found (ops, opset, architecture).")
    created_at: datetime


class DatasetRead(BaseModel):
    id: str
    name: str
    format: Literal["npz", "jsonl"]
    filename: str
    size_bytes: int
    sha256: str
    num_rows: int
    arrays: dict[str, list[int]]
    has_labels: bool
    created_at: datetime


class JobCreate(BaseModel):
    """A pipeline of passes over an uploaded model."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    passes: list[PassSpec] = Field(..., min_length=1, max_length=32)  # type: ignore[valid-type]
    calibration_dataset_id: str | None = None
    eval_dataset_id: str | None = None
    train_dataset_id: str | None = None
    outputs: list[OutputFormat] | None = Field(
        None, description="Formats to produce; default: ONNX for ONNX models, else the upload's format."
    )
    device: Device = "cpu"
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    callback_url: str | None = Field(
        None, max_length=2048,
        description="http(s) URL that gets a signed POST (`X-DeepOpt-Signature: sha256=HMAC-SHA256(body)` with the "
        "tenant's webhook secret) when the job ends; retried with backoff. Loopback and private addresses are "
        "refused unless the operator allows them.",
    )


class JobError(BaseModel):
    code: str
    message: str


class ArtifactRead(BaseModel):
    id: str
    job_id: str
    kind: Literal["model", "adapter", "report", "plot"]
    format: str
    filename: str
    size_bytes: int
    sha256: str
    download_url: str


class BenchmarkRead(BaseModel):
    id: str
    job_id: str
    artifact_id: str | None = Field(..., description="Null for the uploaded original.")
    device: str
    size_bytes: int
    num_parameters: int
    sparsity: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    throughput_per_s: float | None
    peak_memory_bytes: int | None
    metrics: dict[str, Any]


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobRead(BaseModel):
    id: str
    status: JobStatus
    progress: float = Field(..., ge=0, le=1)
    stage: str | None
    metrics: dict[str, Any] | None = Field(
        None, description="Latest metrics of a training pass while it runs and after: loss, step, steps, epoch."
    )
    model_id: str
    spec: dict[str, Any]
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    artifacts: list[ArtifactRead]
    benchmarks: list[BenchmarkRead]
    decisions: list[dict[str, Any]] = Field(
        default_factory=list, description="What each pass decided (per-layer sparsity, quantized nodes, ...)."
    )
    warnings: list[str] = Field(default_factory=list, description="What to know before shipping an output.")


class CompareRow(BaseModel):
    job_id: str | None = Field(..., description="Null for the original model.")
    artifact_id: str | None
    format: str
    recipe: str = Field(..., description="The job's passes, in order.")
    size_bytes: int
    size_ratio: float = Field(..., description="Size against the original's.")
    latency_ms_p50: float | None
    speedup: float | None = Field(None, description="Original p50 latency / this p50 latency.")
    sparsity: float
    accuracy: float | None
    fidelity_cosine: float | None
    warnings: list[str]


class Comparison(BaseModel):
    model_id: str
    rows: list[CompareRow]


class WebhookDeliveryRead(BaseModel):
    id: str
    job_id: str
    url: str
    status: Literal["pending", "delivered", "failed"] = Field(
        ..., description="pending: the job has not ended, or the next try is due at `next_attempt_at`."
    )
    event: str | None = Field(None, description="`job.succeeded`, `job.failed` or `job.cancelled` once sent.")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookSecretRead(BaseModel):
    tenant: str
    secret: str = Field(..., description="Verify `X-DeepOpt-Signature` as `sha256=` + hex HMAC-SHA256(secret, body).")
    source: Literal["settings", "generated"] = Field(
        ..., description="settings: DEEPOPT_WEBHOOK_SECRETS (rotate it there); generated: kept in the database."
    )
