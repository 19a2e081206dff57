"""Provenance: `manifest.json`, written with every run's outputs.

It records what was asked (the validated spec), what it ran on (hashes of the model and datasets, the
machine and library versions), what each pass decided, and the hashes of the outputs, so that a result can
be traced and reproduced.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from deepopt_core.evaluate.environment import machine
from deepopt_core.result import Result

# The seeds the pipeline uses: synthetic inputs and sampling of rows are drawn from these.
SEEDS = {"synthetic_inputs": 0, "numpy": 0, "torch": 0}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    return digest.hexdigest()


def write_manifest(path: Path, *, model: Path, model_format: str, specs: list[Any], outputs: list[str],
                   data: dict[str, Any] | None, device: str, benchmark: Any, result: Result) -> Path:
    """Write the manifest of a finished run to `path` (JSON) and return it."""
    manifest = {
        "manifest_version": 1,
        "spec": {
            "passes": [spec.model_dump(mode="json") for spec in specs],
            "outputs": outputs,
            "device": device,
            "benchmark": benchmark.model_dump(mode="json"),
        },
        "seeds": SEEDS,
        "inputs": {
            "model": {"format": model_format, "sha256": sha256_of(model), "filename": model.name},
            "datasets": {role: {"sha256": sha256_of(p), "filename": Path(p).name}
                         for role, p in (data or {}).items() if p},
        },
        "environment": machine(),
        "decisions": result.decisions,
        "outputs": [{"filename": a.filename, "format": a.format, "kind": a.kind, "sha256": sha256_of(a.path)}
                    for a in result.artifacts],
        "warnings": result.warnings,
    }
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path
