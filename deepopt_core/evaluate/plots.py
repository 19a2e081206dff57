"""The trade-off plot of a run: quality against latency and against size, the Pareto front marked.

Written as SVG (inlined in the HTML report) and PNG. Quality is accuracy when the eval data has labels, else
fidelity (cosine) to the original. A point is on the Pareto front when no other model is at least as good on
quality and on cost and strictly better on one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepopt_core.result import ArtifactResult, BenchmarkResult


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, quality) that no other point dominates (lower cost, higher quality)."""
    front = []
    for i, (cost, quality) in enumerate(points):
        dominated = any(
            c <= cost and q >= quality and (c < cost or q > quality) for j, (c, q) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _quality(bench: BenchmarkResult) -> tuple[str, float | None]:
    if "accuracy" in bench.metrics:
        return "accuracy", float(bench.metrics["accuracy"])
    if bench.artifact_index is None:
        return "fidelity (cosine)", 1.0
    value = bench.metrics.get("fidelity_cosine")
    return "fidelity (cosine)", float(value) if value is not None else None


def plot_points(benchmarks: list[BenchmarkResult], artifacts: list[ArtifactResult]) -> list[dict[str, Any]]:
    """One point per measured model: label, latency, size and quality."""
    points = []
    for bench in benchmarks:
        metric, quality = _quality(bench)
        latency = bench.metrics.get("latency_ms_p50_by_batch") or {}
        largest = max(latency, key=int) if latency else None
        if quality is None or largest is None:
            continue
        label = "original" if bench.artifact_index is None else artifacts[bench.artifact_index].format
        points.append({"label": label, "metric": metric, "quality": quality, "size_mb": bench.size_bytes / 1e6,
                       "latency_ms": float(latency[largest]), "batch": int(largest)})
    return points


def write_tradeoff_plot(benchmarks: list[BenchmarkResult], artifacts: list[ArtifactResult], folder: Path,
                        stem: str) -> list[Path]:
    """Write `<stem>-tradeoff.svg` and `.png` into `folder`; returns the paths (none when nothing to plot)."""
    points = plot_points(benchmarks, artifacts)
    if len(points) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = points[0]["metric"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for axis, cost, title in ((axes[0], "latency_ms", f"p50 latency (ms), batch {points[0]['batch']}"),
                              (axes[1], "size_mb", "size on disk (MB)")):
        pairs = [(p[cost], p["quality"]) for p in points]
        front = pareto_front(pairs)
        for i, point in enumerate(points):
            marker, colour = ("*", "#d62728") if i in front else ("o", "#1f77b4")
            axis.scatter(point[cost], point["quality"], marker=marker, s=140 if i in front else 60, c=colour,
                         zorder=3)
            axis.annotate(point["label"], (point[cost], point["quality"]), textcoords="offset points",
                          xytext=(6, 6), fontsize=8)
        ordered = sorted(pairs[i] for i in front)
        axis.plot([c for c, _ in ordered], [q for _, q in ordered], "--", c="#d62728", lw=1, label="Pareto front")
        axis.set_xlabel(title)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{metric} against cost: original and optimized models")
    figure.tight_layout()
    return save_figure(figure, folder, f"{stem}-tradeoff")


def save_figure(figure: Any, folder: Path, name: str) -> list[Path]:
    """Write `figure` as `<name>.svg` (no date, so the same plot gives the same bytes) and `<name>.png`, close it,
    and return both paths."""
    import matplotlib.pyplot as plt

    paths = []
    for suffix in ("svg", "png"):
        path = folder / f"{name}.{suffix}"
        figure.savefig(path, format=suffix, dpi=110, metadata={"Date": None} if suffix == "svg" else None)
        paths.append(path)
    plt.close(figure)
    return paths
