"""Model formats: detection from bytes, inspection, loading and saving.

Importing this package is light (no torch): the torch-side modules are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepopt_core.errors import InvalidModel
from deepopt_core.formats.detect import detect_format, safe_extract
from deepopt_core.formats.limits import check_declared_shapes
from deepopt_core.specs import ModelFormat, ModelInfo

__all__ = ["detect_format", "inspect_model", "load_torch_model", "safe_extract", "FILE_SUFFIXES"]

FILE_SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2", "hf": ".zip"}
"""Suffix of the files the pipeline writes in each format."""


def inspect_model(path: str | Path, model_format: ModelFormat | None = None) -> ModelInfo:
    """Detect the format of `path` (from its bytes) and describe the model.

    Args:
        path: the uploaded file (or an unpacked Hugging Face folder).
        model_format: the format the caller expects; a file of another format is an InvalidModel.

    Raises:
        UnsupportedFormat, UnsafeContent, InvalidModel: see :func:`detect_format` and the format modules.
    """
    detected = detect_format(path)
    if model_format is not None and detected != model_format:
        raise InvalidModel(f"the file is {detected}, not {model_format}", field="model_format")
    info = _inspect(path, detected)
    check_declared_shapes(info)
    return info


def _inspect(path: str | Path, detected: str) -> ModelInfo:
    if detected == "onnx":
        from deepopt_core.formats.onnx_inspect import inspect_onnx

        return inspect_onnx(path)
    if detected == "hf":
        from deepopt_core.formats.hf_inspect import inspect_hf

        return inspect_hf(path)
    if detected == "torchscript":
        from deepopt_core.formats.torchscript import inspect_torchscript

        return inspect_torchscript(path)
    from deepopt_core.formats.torch_export import inspect_torch_export

    return inspect_torch_export(path)


def load_torch_model(path: str | Path, model_format: str, workdir: str | Path | None = None) -> tuple[Any, Path | None]:
    """Load a torch-format model as a module taking its inputs positionally.

    Returns:
        (module, unpacked Hugging Face folder or None).
    """
    if model_format == "torchscript":
        from deepopt_core.formats.torchscript import load_torchscript

        return load_torchscript(path), None
    if model_format == "torch_export":
        from deepopt_core.formats.torch_export import load_torch_export

        return load_torch_export(path), None
    if model_format == "hf":
        from deepopt_core.formats.hf import load_hf

        return load_hf(path, workdir)
    raise InvalidModel(f"{model_format} is not a PyTorch format")
