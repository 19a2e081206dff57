"""Warnings that keep a benchmark honest: a "compressed" model that helps nothing says so.

Each artifact is compared with the original measured in the same run: smaller but not faster, slower, or
more accuracy lost than the user allowed. The warnings go into the artifact's benchmark `metrics.warnings`.
"""

from __future__ import annotations

from deepopt_core.result import BenchmarkResult

# Differences inside these bands are noise on a shared CPU, not a finding.
SIZE_BAND = 0.95
SPEED_BAND = 0.05


def _latency_at_largest_batch(bench: BenchmarkResult) -> float | None:
    by_batch = bench.metrics.get("latency_ms_p50_by_batch") or {}
    if not by_batch:
        return bench.latency_ms_p50
    largest = max(by_batch, key=lambda k: int(k))
    return float(by_batch[largest])


def warnings_for(original: BenchmarkResult, artifact: BenchmarkResult, max_accuracy_drop: float | None) -> list[str]:
    """What a user should know before shipping `artifact` instead of `original`."""
    notes: list[str] = []
    base, new = _latency_at_largest_batch(original), _latency_at_largest_batch(artifact)
    smaller = artifact.size_bytes < SIZE_BAND * original.size_bytes
    if base and new:
        ratio = new / base
        if ratio > 1 + SPEED_BAND:
            notes.append(f"slower than the original: p50 latency {new:.4g} ms vs {base:.4g} ms ({ratio:.2f}x)")
        elif smaller and ratio > 1 - SPEED_BAND:
            notes.append(
                f"smaller ({artifact.size_bytes / original.size_bytes:.2f}x the size) but not faster: "
                f"p50 latency {new:.4g} ms vs {base:.4g} ms"
            )
    before, after = original.metrics.get("accuracy"), artifact.metrics.get("accuracy")
    if max_accuracy_drop is not None and before is not None and after is not None:
        drop = float(before) - float(after)
        if drop > max_accuracy_drop:
            notes.append(f"lost {drop:.4f} accuracy ({before:.4f} -> {after:.4f}), more than the allowed "
                         f"{max_accuracy_drop:.4f}")
    return notes


def add_warnings(results: list[BenchmarkResult], max_accuracy_drop: float | None) -> list[str]:
    """Attach warnings to each artifact's benchmark (the first result is the original); returns them all."""
    if not results or results[0].artifact_index is not None:
        return []
    original, everything = results[0], []
    for bench in results[1:]:
        notes = warnings_for(original, bench, max_accuracy_drop)
        bench.metrics["warnings"] = notes
        everything += [f"artifact {bench.artifact_index}: {note}" for note in notes]
    return everything
