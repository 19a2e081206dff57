"""Errors the core raises for bad input; the API maps them to 4xx problem responses."""

from __future__ import annotations


class DeepOptError(Exception):
    """Base of the core's errors about user input. `code` is a stable machine-readable name."""

    code = "invalid_input"
    status = 422

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class UnsupportedFormat(DeepOptError):
    """The bytes are not a model format we read (415)."""

    code = "unsupported_format"
    status = 415


class InvalidModel(DeepOptError):
    """A known format, but unreadable, truncated, or unsafe (422)."""

    code = "invalid_model"


class UnsafeContent(DeepOptError):
    """Pickles, escaping archive members or external-data paths, or oversized expansions (422)."""

    code = "unsafe_content"


class InvalidDataset(DeepOptError):
    code = "invalid_dataset"


class PassFailed(Exception):
    """A pass could not complete on this model; the job fails with this message."""

    code = "pass_failed"


class InvalidPipeline(DeepOptError):
    """Pass specs that do not validate, or a pipeline the planner cannot run on this model (422)."""

    code = "invalid_pipeline"


def reason(exc: BaseException, limit: int = 500) -> str:
    """One line saying why `exc` happened: its first line, except for TorchScript's interpreter, whose first line
    only says that an operation failed and whose last line says what the error was."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    if lines[0].startswith("The following operation failed in the TorchScript interpreter") and len(lines) > 1:
        return f"TorchScript: {lines[-1]}"[:limit]
    return lines[0][:limit]
