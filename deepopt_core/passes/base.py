"""What every pass config shares; no heavy imports here (the API imports this module)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _type_is_required(schema: dict[str, Any]) -> None:
    """A job's `passes` is a union discriminated by `type`: a pass without it is a 422, so the schema says it is
    required, although the config classes default it (`QuantizeConfig()` in Python needs no `type`)."""
    if "type" in schema.get("properties", {}):
        required = schema.setdefault("required", [])
        if "type" not in required:
            required.insert(0, "type")


class PassConfig(BaseModel):
    """Base of pass configs: unknown fields are errors, and a stored spec records its schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_type_is_required)

    version: int = Field(1, description="Schema version of the config, recorded with a stored spec so that a "
                         "later release can still read it (1: the only version so far).")


class SubmitContext(BaseModel):
    """Facts a pass config can check at submit time, before any job runs (no heavy imports needed).

    `model` is the stored inspection (`ModelInfo` as a dict); the dataset entries are `DatasetInfo` dicts, or
    None when the job names no such dataset. `models` holds the inspections of other models the passes name by
    id (a distillation's student or teacher; an id missing here is an unknown model), and `outputs` the job's
    output formats (None: the default).
    """

    model: dict[str, Any]
    calibration: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    outputs: list[str] | None = None


def check_pass(spec: BaseModel, context: SubmitContext) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems that `spec` has with this model and these datasets, as (location within the pass, message).

    A config opts in by defining `check(self, context) -> list[tuple[loc, message]]`.
    """
    check = getattr(spec, "check", None)
    return list(check(context)) if callable(check) else []


def referenced_models(spec: BaseModel) -> list[str]:
    """Ids of other uploaded models that a pass spec names (``{"student": {"model_id": ...}}``); the API loads
    their inspections into :attr:`SubmitContext.models` and the worker passes their files as ``extra_models``."""
    names = getattr(spec, "referenced_models", None)
    return list(names()) if callable(names) else []
