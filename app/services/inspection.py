"""Inspection of uploads. Models are inspected in a child process (`python -m deepopt_core.cli inspect`), so
the API process never imports torch and a hostile file cannot take the API down with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.api.problems import FieldProblem, ProblemError


def _problem_from_core(error: dict[str, Any], field: str) -> ProblemError:
    status = int(error.get("status") or 422)
    message = str(error.get("message") or "unreadable")
    return ProblemError(
        status if 400 <= status < 500 else 422,
        f"{field}: {message}",
        code=str(error.get("code") or "invalid_model"),
        errors=[FieldProblem(field=error.get("field") or field, message=message)],
    )


def inspect_model_file(path: Path, timeout_s: float) -> dict[str, Any]:
    """Return the `ModelInfo` of the file as a dict, or raise a 4xx ProblemError naming the `file` field."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "deepopt_core.cli", "inspect", str(path)],
            capture_output=True, timeout=timeout_s, check=False,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired:
        raise ProblemError(
            422, "file: inspection took too long", code="inspection_timeout",
            errors=[FieldProblem(field="file", message="inspection timed out")],
        ) from None
    try:
        payload = json.loads(proc.stdout.decode() or "{}")
    except json.JSONDecodeError:
        payload = {}
    if proc.returncode == 0 and "format" in payload:
        return dict(payload)
    if "error" in payload:
        raise _problem_from_core(payload["error"], "file")
    # A crash of the inspector on this file (e.g. a native-library abort) is still the file's fault.
    raise ProblemError(
        422, "file: not a readable model", code="invalid_model",
        errors=[FieldProblem(field="file", message="the model could not be read")],
    )


def _child_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


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
