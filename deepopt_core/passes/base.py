"""What every pass config shares; no heavy imports here (the API imports this module)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class PassConfig(BaseModel):
    """Base of pass configs: unknown fields are errors, and a stored spec records its schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1


class SubmitContext(BaseModel):
    """Facts a pass config can check at submit time, before any job runs (no heavy imports needed).

    `model` is the stored inspection (`ModelInfo` as a dict); the dataset entries are `DatasetInfo` dicts, or
    None when the job names no such dataset.
    """

    model: dict[str, Any]
    calibration: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    train: dict[str, Any] | None = None


def check_pass(spec: BaseModel, context: SubmitContext) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems that `spec` has with this model and these datasets, as (location within the pass, message).

    A config opts in by defining `check(self, context) -> list[tuple[loc, message]]`.
    """
    check = getattr(spec, "check", None)
    return list(check(context)) if callable(check) else []
