"""Inspection of uploads. Models are inspected in a sandboxed child process (`python -m deepopt_core.cli
inspect`), so the API process never imports torch or reads a model, and a hostile file can neither take the API
down with it nor see what the API holds."""

from __future__ import annotations

import logging
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from app.api.problems import FieldProblem, ProblemError
from app.core.config import Settings
from deepopt_core.protocol import Failure, Inspected, parse_event
from deepopt_core.sandbox import child_command, child_env, prepare_scratch

log = logging.getLogger("deepopt.inspection")


def _problem_from_core(error: dict[str, Any], field: str) -> ProblemError:
    status = int(error.get("status") or 422)
    message = str(error.get("message") or "unreadable")
    return ProblemError(
        status if 400 <= status < 500 else 422,
        f"{field}: {message}",
        code=str(error.get("code") or "invalid_model"),
        errors=[FieldProblem(field=error.get("field") or field, message=message)],
    )


def inspect_model_file(path: Path, settings: Settings) -> dict[str, Any]:
    """Return the `ModelInfo` of the file as a dict, or raise a 4xx ProblemError naming the `file` field.

    The inspector runs in the sandbox (:mod:`deepopt_core.sandbox`: no secret in its environment, no network,
    its scratch folder the only writable place, `path` the only upload it can read); its stdout is read only as
    :mod:`deepopt_core.protocol` messages, and the description it returns holds only what `ModelInfo` allows.
    """
    scratch = settings.work_dir / "inspect" / uuid.uuid4().hex
    prepare_scratch(scratch)
    try:
        proc = subprocess.run(
            child_command(["inspect", str(path)], scratch=scratch, readable=[path],
                          strict=settings.sandbox == "strict"),
            capture_output=True, timeout=settings.inspect_timeout_s, check=False, cwd=scratch,
            env=child_env(scratch),
        )
    except subprocess.TimeoutExpired:
        raise ProblemError(
            422, "file: inspection took too long", code="inspection_timeout",
            errors=[FieldProblem(field="file", message="inspection timed out")],
        ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode not in (0, 2):
        log.warning("inspection child ended with %s: %s", proc.returncode, proc.stderr[-2000:].decode(errors="replace"))
    return inspection_answer(proc.stdout, proc.returncode)


def inspection_answer(stdout: bytes, returncode: int) -> dict[str, Any]:
    """What the inspector's output says: exactly one protocol answer with the exit status that goes with it
    (0 for a description, 2 for a refusal); anything else, a forged second answer included, is not trusted."""
    events = [event for line in stdout.splitlines() if (event := parse_event(line)) is not None]
    if len(events) == 1 and isinstance(events[0], Inspected) and returncode == 0:
        return events[0].info.model_dump()
    if len(events) == 1 and isinstance(events[0], Failure) and returncode == 2:
        raise _problem_from_core(events[0].model_dump(), "file")
    # A crash of the inspector on this file (e.g. a native-library abort) is still the file's fault.
    raise ProblemError(
        422, "file: not a readable model", code="invalid_model",
        errors=[FieldProblem(field="file", message="the model could not be read")],
    )


def inspect_dataset_file(path: Path) -> dict[str, Any]:
    """Return the `DatasetInfo` of the file as a dict, or raise a 4xx ProblemError naming the `file` field."""
    from deepopt_core.datasets import inspect_dataset
    from deepopt_core.errors import DeepOptError

    try:
        return inspect_dataset(path).model_dump()
    except DeepOptError as exc:
        raise _problem_from_core(
            {"status": exc.status, "code": exc.code, "message": exc.message, "field": exc.field}, "file"
        ) from None
