"""The pipeline's public vocabulary: pass specs, outputs, benchmark settings and model facts.

Light on purpose: the API imports this module to validate job specs and must not import torch.
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

import deepopt_core.passes  # noqa: F401  (registers every pass)
from deepopt_core.registry import all_passes, get_pass

ModelFormat = Literal["onnx", "torchscript", "torch_export", "hf"]
OutputFormat = Literal["onnx", "torchscript", "torch_export", "hf"]
Device = Literal["cpu", "cuda"]
TORCH_FORMATS: frozenset[str] = frozenset({"torchscript", "torch_export", "hf"})


def pass_tag(value: Any) -> str | None:
    """The union tag of a pass spec (dict or config): `type`, or `type/variant` (`quantize/dynamic`)."""
    get = value.get if isinstance(value, dict) else lambda key, default=None: getattr(value, key, default)
    pass_type = get("type")
    if not isinstance(pass_type, str):
        return None
    try:
        entry = get_pass(pass_type)
    except KeyError:
        return pass_type
    if entry.variant_field is None:
        return pass_type
    return f"{pass_type}/{get(entry.variant_field, entry.default_variant)}"


def _pass_union() -> Any:
    variants: list[Any] = []
    names: list[str] = []
    for entry in all_passes():
        for config in entry.configs:
            tag = entry.type if entry.variant_field is None else f"{entry.type}/{entry.variant_of(config)}"
            variants.append(Annotated[config, Tag(tag)])
            names.append(tag)
    tags = ", ".join(repr(name) for name in names)
    # One flat union with a callable discriminator: nested `discriminator=` unions produce OpenAPI mappings
    # that point at schemas instead of refs, which the OpenAPI schema rejects.
    return Annotated[
        reduce(or_, variants),
        Discriminator(
            pass_tag,
            custom_error_type="unknown_pass",
            custom_error_message=f"unknown pass type or variant; known: {tags}",
        ),
    ]


PassSpec = _pass_union()
"""Discriminated union of every registered pass config, on `type` (and `mode`/`method` for variants)."""

PASS_TAGS: frozenset[str] = frozenset(
    str(v.__metadata__[0].tag) for v in PassSpec.__origin__.__args__  # type: ignore[attr-defined]
)
"""Union tags, which pydantic puts into validation error locations; the API drops them from field names."""


class BenchmarkSettings(BaseModel):
    """How the original and every output are timed; the same settings for all, in the same process."""

    model_config = ConfigDict(extra="forbid")

    batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(default_factory=lambda: [1], min_length=1)
    runs: int = Field(50, ge=1, le=10_000, description="Timed runs per batch size, after warm-up.")
    warmup: int = Field(5, ge=0, le=1000)
    threads: int | None = Field(None, ge=1, le=256, description="Intra-op threads; default: all cores.")
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimizations applied when timing ONNX models."
    )
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1, description="Warn on an artifact whose accuracy drops by more than this (absolute)."
    )


class TensorInfo(BaseModel):
    name: str
    shape: list[int | str | None] | None = Field(None, description="Dims; strings/None are symbolic.")
    dtype: str = "float32"


class ModelInfo(BaseModel):
    """What inspection of an uploaded model found; stored with the model and used to validate jobs."""

    format: ModelFormat
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    num_parameters: int = 0
    op_types: dict[str, int] = Field(default_factory=dict, description="ONNX op type counts / torch module kinds.")
    prunable_layers: int = 0
    opset: int | None = None
    architecture: str | None = Field(None, description="Hugging Face architecture, when known.")
    details: dict[str, Any] = Field(default_factory=dict)


class DatasetInfo(BaseModel):
    """What inspection of an uploaded dataset found."""

    format: Literal["npz", "jsonl"]
    num_rows: int
    arrays: dict[str, list[int]] = Field(default_factory=dict, description="npz: array name -> shape.")
    dtypes: dict[str, str] = Field(default_factory=dict)
    has_labels: bool = False
