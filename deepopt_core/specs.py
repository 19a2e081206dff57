"""The pipeline's public vocabulary: pass specs, outputs, benchmark settings and model facts.

Light on purpose: the API imports this module to validate job specs and must not import torch.
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

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


Name = Annotated[str, Field(max_length=1024)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class TensorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    shape: list[int | Name | None] | None = Field(None, max_length=64, description="Dims; strings/None are symbolic.")
    dtype: Annotated[str, Field(max_length=32)] = "float32"


class ModelDetails(BaseModel):
    """The format-specific facts inspection may store: these fields and no others (a description forged by a
    hostile file can carry nothing else), each bounded in size."""

    model_config = ConfigDict(extra="forbid")

    size_bytes: int | None = None
    # ONNX
    ir_version: int | None = None
    producer: Name | None = None
    opsets: dict[Name, int] | None = Field(None, max_length=64)
    # TorchScript
    traced: bool | None = None
    float32_ops: list[Name] | None = Field(
        None, max_length=32, description="TorchScript: ops that make float32 tensors whatever the weights' dtype.")
    traced_input_shapes: list[list[int]] | None = Field(None, max_length=64)
    forward_schema: Annotated[str, Field(max_length=8192)] | None = None
    # torch.export
    range_constraints: dict[Name, Name] | None = Field(None, max_length=256)
    computes_with_sizes: bool | None = Field(
        None, description="The program computes with its symbolic input sizes (a trace would fix them).")
    # Hugging Face
    model_type: Name | None = None
    has_tokenizer: bool | None = None
    num_labels: int | None = None
    vocab_size: int | None = None
    pad_token_id: Count | None = Field(None, description="Text models: the config's pad token id.")
    eos_token_id: Count | None = Field(None, description="Text models: the config's (first) end-of-sequence token id.")
    files: list[Name] | None = Field(None, max_length=100_000)
    task: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="Pipeline task of the architecture: text-generation, text-classification, ...")
    dtype: Annotated[str, Field(max_length=32)] | None = Field(
        None, description="Floating dtype of most of the stored weights (float32, float16, bfloat16).")
    context_length: Count | None = Field(None, description="Longest sequence (max_position_embeddings).")
    hidden_size: Count | None = None
    num_layers: Count | None = None
    num_attention_heads: Count | None = None
    num_key_value_heads: Count | None = Field(None, description="Grouped-query attention's key/value heads.")
    tie_word_embeddings: bool | None = None
    num_channels: Count | None = Field(None, description="Image models: channels of pixel_values.")
    image_size: Count | None = Field(None, description="Image models: side of the square images, when fixed.")


class ModelInfo(BaseModel):
    """What inspection of an uploaded model found; stored with the model and used to validate jobs."""

    model_config = ConfigDict(extra="forbid")

    format: ModelFormat
    inputs: list[TensorInfo] = Field(default_factory=list, max_length=4096)
    outputs: list[TensorInfo] = Field(default_factory=list, max_length=4096)
    num_parameters: int = 0
    op_types: dict[Name, int] = Field(default_factory=dict, max_length=4096,
                                      description="ONNX op type counts / torch module kinds.")
    prunable_layers: int = 0
    opset: int | None = None
    architecture: Name | None = Field(None, description="Hugging Face architecture, when known.")
    details: dict[str, Any] = Field(default_factory=dict, description="Format-specific facts (`ModelDetails`).")

    @field_validator("details", mode="after")
    @classmethod
    def _known_details(cls, details: dict[str, Any]) -> dict[str, Any]:
        # Kept a dict (readers use .get), but only with the fields and bounds of ModelDetails.
        return ModelDetails.model_validate(details).model_dump(exclude_unset=True)


class DatasetInfo(BaseModel):
    """What inspection of an uploaded dataset found."""

    format: Literal["npz", "jsonl"]
    num_rows: int
    arrays: dict[str, list[int]] = Field(default_factory=dict, description="npz: array name -> shape.")
    dtypes: dict[str, str] = Field(default_factory=dict)
    has_labels: bool = False
