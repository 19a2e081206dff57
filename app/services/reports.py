"""The job report (one self-contained HTML page) and the comparison of jobs on the same model."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from app.db.models import Benchmark, Job
from app.schemas import CompareRow
from app.storage import Storage

MAX_INLINE_SVG_BYTES = 8 * 1024 * 1024

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DeepOpt report {job_id}</title>
<link rel="icon" href="data:,">
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ background: #f3f3f3; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.warn {{ color: #a40; }} pre {{ background: #f7f7f7; padding: 1em; overflow: auto; }}
</style></head><body>
<h1>DeepOpt report</h1>
<p>Job <code>{job_id}</code> on model <code>{model_id}</code>: <b>{status}</b>{error}.
Created {created_at}, finished {finished_at}.</p>
<h2>Recipe</h2><p>{recipe}</p>
<h2>Results against the original</h2>{table}
{warnings}
<h2>Trade-off</h2>{plot}
<h2>Decisions of each pass</h2>{decisions}
<h2>Spec</h2><pre>{spec}</pre>
</body></html>
"""


def recipe(spec: dict[str, Any]) -> str:
    """`prune(magnitude, sparsity=0.5) -> quantize(dynamic, weight_dtype=int8)`."""
    steps = []
    for step in spec.get("passes", []):
        variant = step.get("mode") or step.get("method")
        knobs = [f"{k}={v}" for k, v in step.items()
                 if k in ("sparsity", "weight_dtype", "n", "m", "opset", "objective", "max_accuracy_drop")]
        inside = ", ".join([*([variant] if variant else []), *knobs])
        steps.append(f"{step.get('type')}({inside})")
    return " -> ".join(steps)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _row_metrics(bench: Benchmark, original: Benchmark | None) -> dict[str, Any]:
    size_ratio = bench.size_bytes / original.size_bytes if original and original.size_bytes else None
    speedup = (original.latency_ms_p50 / bench.latency_ms_p50
               if original and original.latency_ms_p50 and bench.latency_ms_p50 else None)
    return {"size_ratio": size_ratio, "speedup": speedup, "accuracy": bench.metrics.get("accuracy"),
            "fidelity_cosine": bench.metrics.get("fidelity_cosine"), "warnings": bench.metrics.get("warnings", [])}


def _results_table(job: Job) -> str:
    artifacts = {a.id: a for a in job.artifacts}
    original = next((b for b in job.benchmarks if b.artifact_id is None), None)
    head = ("<tr><th>model</th><th>size (bytes)</th><th>x size</th><th>p50 ms</th><th>p95 ms</th><th>speed-up</th>"
            "<th>throughput/s</th><th>sparsity</th><th>accuracy</th><th>fidelity</th><th>top-1 agree</th></tr>")
    rows = []
    for bench in job.benchmarks:
        name = "original" if bench.artifact_id is None else artifacts[bench.artifact_id].filename
        extra = _row_metrics(bench, original)
        cells = [html.escape(name), _fmt(bench.size_bytes), _fmt(extra["size_ratio"], 3),
                 _fmt(bench.latency_ms_p50), _fmt(bench.latency_ms_p95), _fmt(extra["speedup"], 3),
                 _fmt(bench.throughput_per_s), _fmt(bench.sparsity, 3), _fmt(extra["accuracy"]),
                 _fmt(extra["fidelity_cosine"]), _fmt(bench.metrics.get("top1_agreement"))]
        rows.append("<tr>" + "".join(
            f"<td>{c}</td>" if i == 0 else f"<td class=num>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No benchmarks (the job did not succeed).</p>"


def _decisions(decisions: list[dict[str, Any]]) -> str:
    if not decisions:
        return "<p>-</p>"
    parts = []
    for decision in decisions:
        if decision.get("type") == "auto":
            parts.append(_auto_trials(decision))
            continue
        layers = decision.get("layers")
        summary = {k: v for k, v in decision.items() if k != "layers"}
        part = f"<h3>{html.escape(str(decision.get('type')))} ({html.escape(str(decision.get('track', '')))})</h3>"
        part += f"<pre>{html.escape(json.dumps(summary, indent=1, default=str))}</pre>"
        if isinstance(layers, dict):
            part += "<table><tr><th>layer</th><th>sparsity</th></tr>" + "".join(
                f"<tr><td>{html.escape(str(k))}</td><td class=num>{_fmt(v, 3)}</td></tr>" for k, v in layers.items()
            ) + "</table>"
        parts.append(part)
    return "".join(parts)


def _auto_trials(decision: dict[str, Any]) -> str:
    """The `auto` pass: its verdict, then one row per trial (measured, failed or skipped with the reason)."""
    base = decision.get("baseline") or {}
    metric = html.escape(str(decision.get("metric")))
    verdict = (f"objective <b>{html.escape(str(decision.get('objective')))}</b>, {metric}"
               f" drop at most {_fmt(decision.get('max_accuracy_drop'))}; {decision.get('trials_run')} trials run, "
               f"{decision.get('trials_skipped')} rejected from estimates, stopped: "
               f"{html.escape(str(decision.get('stopped')))} after {_fmt(decision.get('seconds'))} s; chosen: "
               f"<b>{html.escape(str(decision.get('chosen_label')))}</b>; met_bound: "
               f"<b>{html.escape(str(decision.get('met_bound')).lower())}</b>. Original: {_fmt(base.get('quality'))} "
               f"{metric}, {_fmt(base.get('latency_ms'))} ms, "
               f"{_fmt(base.get('size_bytes'))} bytes.")
    head = ("<tr><th>#</th><th>recipe</th><th>status</th><th>quality</th><th>drop</th><th>p50 ms</th>"
            "<th>speed-up</th><th>x size</th><th>s</th><th>Pareto</th><th>note</th></tr>")
    rows = []
    for trial in decision.get("trials") or []:
        chosen = trial.get("trial") == decision.get("chosen") and trial.get("status") == "measured"
        confirmed = trial.get("speedup_confirmed")
        note = trial.get("reason") or (f"timed again: x{confirmed:.3g}" if confirmed else "")
        cells = [_fmt(trial.get("trial") or "-"), html.escape(str(trial.get("label"))) + (" <b>(chosen)</b>" if chosen
                 else ""), html.escape(str(trial.get("status"))), _fmt(trial.get("quality")), _fmt(trial.get("drop")),
                 _fmt(trial.get("latency_ms")), _fmt(trial.get("speedup"), 3), _fmt(trial.get("size_ratio"), 3),
                 _fmt(trial.get("seconds"), 3), "yes" if trial.get("pareto") else "", html.escape(str(note))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<h3>auto</h3><p>{verdict}</p><table>{head}{''.join(rows)}</table>"


def _inline_svg(job: Job, storage: Storage) -> str:
    plots = [a for a in job.artifacts if a.kind == "plot" and a.format == "svg" and storage.exists(a.storage_key)]
    if not plots:
        return "<p>No plot.</p>"
    figures = []
    for svg in plots:
        text = storage.read_bytes(svg.storage_key, MAX_INLINE_SVG_BYTES).decode(errors="replace")
        # Our own matplotlib output; drop the XML prolog and anything scriptable all the same.
        text = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>", "", text)
        text = re.sub(r"<script.*?</script>", "", text, flags=re.S | re.I)
        figures.append(f"<figure>{text}<figcaption>{html.escape(svg.filename)}</figcaption></figure>")
    return "".join(figures)


def render_report(job: Job, storage: Storage) -> str:
    info = job.result_info or {}
    warnings = info.get("warnings", [])
    error = f" ({html.escape(job.error_code)}: {html.escape(job.error_message or '')})" if job.error_code else ""
    return PAGE.format(
        job_id=html.escape(job.id), model_id=html.escape(job.model_id), status=html.escape(job.status),
        error=error,
        created_at=_fmt(job.created_at), finished_at=_fmt(job.finished_at),
        recipe=html.escape(recipe(job.spec)), table=_results_table(job),
        warnings="<h2>Warnings</h2><ul>" + "".join(f"<li class=warn>{html.escape(w)}</li>" for w in warnings)
        + "</ul>" if warnings else "",
        plot=_inline_svg(job, storage), decisions=_decisions(info.get("decisions", [])),
        spec=html.escape(json.dumps(job.spec, indent=2)),
    )


def compare_rows(jobs: list[Job]) -> list[CompareRow]:
    """The original once, then every model artifact of every job, measured against that original."""
    rows: list[CompareRow] = []
    original = next((b for job in jobs for b in job.benchmarks if b.artifact_id is None), None)
    if original is not None:
        rows.append(CompareRow(
            job_id=None, artifact_id=None, format="original", recipe="", size_bytes=original.size_bytes,
            size_ratio=1.0, latency_ms_p50=original.latency_ms_p50, speedup=1.0, sparsity=original.sparsity,
            accuracy=original.metrics.get("accuracy"), fidelity_cosine=1.0, warnings=[],
        ))
    for job in jobs:
        job_original = next((b for b in job.benchmarks if b.artifact_id is None), None)
        artifacts = {a.id: a for a in job.artifacts}
        for bench in job.benchmarks:
            if bench.artifact_id is None:
                continue
            extra = _row_metrics(bench, job_original)
            rows.append(CompareRow(
                job_id=job.id, artifact_id=bench.artifact_id, format=artifacts[bench.artifact_id].format,
                recipe=recipe(job.spec), size_bytes=bench.size_bytes, size_ratio=extra["size_ratio"] or 0.0,
                latency_ms_p50=bench.latency_ms_p50, speedup=extra["speedup"], sparsity=bench.sparsity,
                accuracy=extra["accuracy"], fidelity_cosine=extra["fidelity_cosine"], warnings=extra["warnings"],
            ))
    return rows
