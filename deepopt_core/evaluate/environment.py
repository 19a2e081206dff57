"""Where a benchmark ran, so that figures can be compared honestly: machine, library versions, runtime knobs."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata
from typing import Any

PACKAGES = ("deepopt", "torch", "onnx", "onnxruntime", "numpy", "transformers")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache
def machine() -> dict[str, Any]:
    """The machine and software a run measured on (computed once per process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(),
    }


def runtime_settings(model_format: str, device: str, threads: int | None, graph_optimization: str) -> dict[str, Any]:
    """The execution provider / engine and knobs a model was timed with."""
    if model_format == "onnx":
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        return {"engine": "onnxruntime", "provider": provider, "graph_optimization_level": graph_optimization,
                "intra_op_threads": threads or "default"}
    return {"engine": "torch", "device": device, "intra_op_threads": threads or "default"}
