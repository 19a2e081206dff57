"""What the API and the workers say to a core child process, and what it says back, as typed messages.

The requests (:class:`RunRequest`, :class:`TrialRequest`) are written once by the worker (:func:`write_message`)
and read back validated by the child (:func:`read_message`). The child (``python -m deepopt_core.cli``) answers
on stdout, one JSON object a line, and the API and workers read those lines with :func:`parse_event`. A line
that is not one of these messages, exactly, is not an event: it is logged by the reader and otherwise ignored, so
nothing a model's code prints can become a progress report, an error or a model description. Bounds on every
field keep a hostile child from filling the job row. Progress is data (:class:`Progress`: the fraction, the pass
it is in); its `stage` is only the text a person reads, and no reader parses it back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from deepopt_core.specs import ModelFormat, ModelInfo

log = logging.getLogger("deepopt.protocol")

MAX_LINE_BYTES = 4 * 1024 * 1024
Metric = float | int | str | bool | None | list[float | int | None]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


Message = TypeVar("Message", bound=BaseModel)


class Progress(_Message):
    """How far the pipeline got, and in which pass; training passes add their latest metrics."""

    event: Literal["progress"] = "progress"
    fraction: float = Field(ge=0.0, le=1.0)
    stage: Annotated[str, Field(max_length=200)] = Field(
        "", description="What a person reads: `prune`, `distill 120/400 loss 0.4123`, `benchmark`.")
    pass_index: int | None = Field(None, ge=0, le=10_000, description="The pass of the request being run.")
    pass_type: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="Its type (`export` also for the export the plan adds; none while loading, saving, "
        "verifying or benchmarking).")
    metrics: dict[Annotated[str, Field(max_length=64)], Metric] | None = Field(None, max_length=64)


class Failure(_Message):
    """Bad input or a failed pass: the job or upload fails with this code and message."""

    event: Literal["error"] = "error"
    code: Annotated[str, Field(max_length=64)]
    message: Annotated[str, Field(max_length=8000)]
    status: int | None = None
    field: Annotated[str, Field(max_length=256)] | None = None


class Done(_Message):
    """The run or trial finished; its result file is in the workdir."""

    event: Literal["result"] = "result"


class Inspected(_Message):
    """The facts of an inspected model."""

    event: Literal["inspected"] = "inspected"
    info: ModelInfo


Event = Annotated[Progress | Failure | Done | Inspected, Field(discriminator="event")]
_EVENT: TypeAdapter[Progress | Failure | Done | Inspected] = TypeAdapter(Event)


def dump(event: _Message) -> str:
    """The line (without its newline) that carries `event`."""
    return event.model_dump_json(exclude_none=True)


def parse_event(line: bytes | str) -> Progress | Failure | Done | Inspected | None:
    """The event on `line`, or None when the line is not exactly one of the messages above."""
    if len(line) > MAX_LINE_BYTES:
        log.warning("child output line of %d bytes ignored", len(line))
        return None
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    try:
        return _EVENT.validate_json(text)
    except ValidationError:
        log.warning("child output that is not a protocol message ignored: %.200s", text)
        return None


# -- requests ---------------------------------------------------------------------------------------------------


class RunData(_Message):
    """The dataset files of a run, by role."""

    calibration: Path | None = None
    eval: Path | None = None
    train: Path | None = None


class RunRequest(_Message):
    """One pipeline run (``python -m deepopt_core.cli run REQUEST``).

    The pass specs and benchmark settings are validated by :func:`deepopt_core.pipeline.optimize` (a bad one is a
    Failure message, not a crash); everything else here is validated when the request is read.
    """

    model: Path
    model_info: ModelInfo | None = Field(
        None, description="The model's inspection stored at upload: the child does not inspect it again.")
    model_format: ModelFormat | None = Field(None, description="Without model_info: inspect the model as this.")
    model_name: str | None = Field(None, max_length=255, description="Base of the output file names.")
    passes: list[dict[str, Any]] = Field(default_factory=list)
    data: RunData = Field(default_factory=RunData)
    outputs: list[str] | None = None
    device: str = "cpu"
    benchmark: dict[str, Any] | None = None
    workdir: Path = Field(description="Where the outputs and result.json go.")
    extra_models: dict[str, Path] = Field(
        default_factory=dict, description="Other uploaded models the passes name by id (a distillation student).")
    trial_dispatch: Path | None = Field(
        None, description="The folder through which the worker runs `auto` trials on other workers too "
        "(:mod:`deepopt_core.passes.auto.folder`).")


class TrialRequest(_Message):
    """One `auto` trial on a bundle (``python -m deepopt_core.cli trial REQUEST``)."""

    bundle: Path
    number: int
    recipe: list[dict[str, Any]]
    workdir: Path = Field(description="Where trial.json (the answer) and trial.onnx go.")
    worker: str | None = Field(None, description="The worker running it, as its decisions name it.")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all: a temporary name in the same folder, then a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_message(path: Path, message: BaseModel) -> Path:
    """Write a request (or any message) as JSON, atomically; returns `path`."""
    write_atomic(path, message.model_dump_json(indent=2))
    return path


def read_message(path: str | Path, kind: type[Message]) -> Message:
    """The message of type `kind` in `path`, validated (pydantic.ValidationError when it is not one)."""
    return kind.model_validate_json(Path(path).read_text())
