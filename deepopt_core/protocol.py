"""What a core child process says on stdout, as typed messages: one JSON object a line.

The child (``python -m deepopt_core.cli``) writes them and the API and workers read them with
:func:`parse_event`. A line that is not one of these messages, exactly, is not an event: it is logged by the
reader and otherwise ignored, so nothing a model's code prints can become a progress report, an error or a model
description. Bounds on every field keep a hostile child from filling the job row.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from deepopt_core.specs import ModelInfo

log = logging.getLogger("deepopt.protocol")

MAX_LINE_BYTES = 4 * 1024 * 1024
Metric = float | int | str | bool | None | list[float | int | None]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Progress(_Message):
    """How far the pipeline got; training passes add their latest metrics."""

    event: Literal["progress"] = "progress"
    progress: float = Field(ge=0.0, le=1.0)
    stage: Annotated[str, Field(max_length=200)] = ""
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
