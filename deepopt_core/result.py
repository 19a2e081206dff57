"""What a pipeline run returns. Plain pydantic models, so results cross process boundaries as JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ArtifactKind = Literal["model", "adapter", "report", "plot"]


class ArtifactResult(BaseModel):
    """A file the run produced; already loaded and run once to verify it (models)."""

    path: str = Field(..., description="Absolute path of the file inside the run's workdir.")
    kind: ArtifactKind = "model"
    format: str = Field(..., description="onnx | torchscript | torch_export | hf | json | ...")
    filename: str = Field(..., description="Name a user downloads it under.")


class BenchmarkResult(BaseModel):
    """One model measured: the original (`artifact_index=None`) or `artifacts[artifact_index]`."""

    artifact_index: int | None
    device: str = "cpu"
    size_bytes: int
    num_parameters: int
    sparsity: float = Field(..., description="Fraction of zeros among prunable weights.")
    latency_ms_p50: float | None = Field(None, description="At the first batch size.")
    latency_ms_p95: float | None = None
    throughput_per_s: float | None = Field(None, description="Samples per second at the largest batch size.")
    peak_memory_bytes: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class Result(BaseModel):
    artifacts: list[ArtifactResult] = Field(default_factory=list)
    benchmarks: list[BenchmarkResult] = Field(default_factory=list)
    decisions: list[dict[str, Any]] = Field(default_factory=list, description="Per pass, what it decided.")
    warnings: list[str] = Field(default_factory=list)
