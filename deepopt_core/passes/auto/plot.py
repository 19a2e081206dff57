"""The trials plot of the `auto` pass: every measured trial's quality against latency and size, the original,
the accuracy bound, the Pareto front and the chosen trial (SVG, inlined in the report, and PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepopt_core.evaluate.plots import pareto_front, save_figure


def write_trials_plot(decisions: dict[str, Any], folder: Path, stem: str) -> list[Path]:
    """Write `<stem>-auto-trials.svg` and `.png`; returns the paths (none when no trial was measured)."""
    measured = [t for t in decisions["trials"] if t["status"] == "measured"]
    if not measured:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = decisions["baseline"]
    bound = base["quality"] - decisions["max_accuracy_drop"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for axis, cost, title in ((axes[0], "latency_ms", f"p50 latency (ms), batch {decisions['batch_size']}"),
                              (axes[1], "size_bytes", "size on disk (bytes)")):
        points = [(float(t[cost]), float(t["quality"])) for t in measured]
        front = set(pareto_front(points))
        for i, (trial, (x, y)) in enumerate(zip(measured, points, strict=True)):
            chosen = trial["trial"] == decisions["chosen"]
            axis.scatter(x, y, marker="*" if i in front else "o", s=160 if chosen else 60,
                         c="#2ca02c" if chosen else ("#d62728" if i in front else "#1f77b4"), zorder=3)
            axis.annotate(str(trial["trial"]), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        axis.scatter(float(base[cost]), float(base["quality"]), marker="s", c="#7f7f7f", s=60, zorder=3,
                     label="original")
        ordered = sorted(points[i] for i in front)
        axis.plot([c for c, _ in ordered], [q for _, q in ordered], "--", c="#d62728", lw=1, label="Pareto front")
        axis.axhline(bound, c="#ff7f0e", lw=1, ls=":", label=f"bound (drop {decisions['max_accuracy_drop']})")
        axis.set_xlabel(title)
        axis.set_ylabel(decisions["metric"])
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
    figure.suptitle(f"auto: {len(measured)} trials by {decisions['objective']} (numbers are trial numbers; "
                    "green: chosen)")
    figure.tight_layout()
    return save_figure(figure, folder, f"{stem}-auto-trials")
