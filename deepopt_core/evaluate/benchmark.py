"""Benchmark the original model and every model artifact with the same settings, inputs and process."""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepopt_core.datasets import Dataset
from deepopt_core.evaluate.environment import machine, runtime_settings
from deepopt_core.evaluate.honesty import add_warnings
from deepopt_core.evaluate.inputs import dataset_feed, rows_of, synthetic_feed, take
from deepopt_core.evaluate.latency import MemoryWatch, time_runner, timing_metrics
from deepopt_core.evaluate.metrics import quality
from deepopt_core.evaluate.runners import first_outputs, open_runner, size_on_disk
from deepopt_core.result import BenchmarkResult
from deepopt_core.specs import BenchmarkSettings, ModelInfo

log = logging.getLogger("deepopt.evaluate")
MAX_EVAL_ROWS = 1024
SYNTHETIC_ROWS = 32


@dataclass
class Subject:
    """One model to measure: `artifact_index` None for the original."""

    artifact_index: int | None
    path: Path
    format: str
    info: ModelInfo


@dataclass
class EvalInputs:
    """The rows every model runs on, where they came from, and their labels (if any)."""

    feed: dict[str, np.ndarray]
    source: str
    labels: np.ndarray | None


def eval_inputs(info: ModelInfo, eval_data: Dataset | None, calibration: Dataset | None,
                tokenizer: Any = None) -> EvalInputs:
    """Rows from the eval dataset, else the calibration dataset, else synthetic rows (fixed seed)."""
    for source, dataset in (("eval", eval_data), ("calibration", calibration)):
        if dataset is not None:
            feed = dataset_feed(info, dataset, tokenizer=tokenizer, max_rows=MAX_EVAL_ROWS)
            labels = dataset.labels[:MAX_EVAL_ROWS] if dataset.labels is not None else None
            return EvalInputs(feed, source, labels)
    vocab = int(info.details.get("vocab_size") or 1000)
    return EvalInputs(synthetic_feed(info, SYNTHETIC_ROWS, vocab_size=vocab), "synthetic", None)


def static_batch(info: ModelInfo) -> int | None:
    """The batch size a model is fixed to (an integer first dimension on every input), else None."""
    sizes = {t.shape[0] for t in info.inputs if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0}
    return sizes.pop() if len(sizes) == 1 else None


def measure(subject: Subject, inputs: EvalInputs, settings: BenchmarkSettings, reference: np.ndarray | None, *,
            device: str = "cpu", workdir: Path | None = None, warnings: list[str] | None = None,
            on_progress: Callable[[float], None] | None = None) -> tuple[BenchmarkResult, np.ndarray]:
    """Load, run (quality on all rows, then timing), and describe one model. Returns (result, first outputs)."""
    memory = MemoryWatch()
    loading = time.perf_counter()
    runner = open_runner(subject.path, subject.format, subject.info, threads=settings.threads, workdir=workdir,
                         device=device, graph_optimization=settings.graph_optimization_level)
    load_time_ms = (time.perf_counter() - loading) * 1000
    try:
        memory.sample()
        batch_sizes = settings.batch_sizes
        fixed = static_batch(subject.info)
        if fixed is not None and batch_sizes != [fixed]:
            if warnings is not None:
                warnings.append(f"benchmark: the {subject.format} model has a fixed batch size of {fixed}; "
                                f"timed at that size only")
            batch_sizes = [fixed]
        outputs = first_outputs(runner, inputs.feed, fixed or max(batch_sizes))
        if on_progress is not None:
            on_progress(0.3)
        timing = time_runner(runner, inputs.feed, settings, memory, batch_sizes,
                             on_progress=(lambda f: on_progress(0.3 + 0.7 * f)) if on_progress else None)
        metrics = quality(reference, outputs, inputs.labels)
        metrics.update(timing_metrics(timing))
        metrics["inputs"] = inputs.source
        metrics["rows"] = int(len(outputs))
        metrics["load_time_ms"] = round(load_time_ms, 2)
        metrics["settings"] = {
            "batch_sizes": batch_sizes, "runs": settings.runs, "warmup": settings.warmup,
            **runtime_settings(subject.format, device, settings.threads, settings.graph_optimization_level),
        }
        metrics["machine"] = machine()
        report = runner.sparsity()
        first = batch_sizes[0]
        largest = max(batch_sizes)
        result = BenchmarkResult(
            artifact_index=subject.artifact_index,
            device=device,
            size_bytes=size_on_disk(subject.path),
            num_parameters=runner.num_parameters(),
            sparsity=round(report.sparsity, 6),
            latency_ms_p50=round(timing.p50_ms[first], 4),
            latency_ms_p95=round(timing.p95_ms[first], 4),
            throughput_per_s=round(timing.throughput[largest], 2),
            peak_memory_bytes=timing.peak_memory_bytes,
            metrics=metrics,
        )
    finally:
        runner.close()
        del runner
        gc.collect()
    return result, outputs


def common_rows(inputs: EvalInputs, subjects: list[Subject]) -> EvalInputs:
    """Trim (or wrap) the rows to a multiple of every fixed batch size, so that all models see the same rows."""
    fixed = [b for b in (static_batch(s.info) for s in subjects) if b]
    if not fixed:
        return inputs
    multiple = math.lcm(*fixed)
    rows = max(multiple, (rows_of(inputs.feed) // multiple) * multiple)
    labels = inputs.labels
    if labels is not None:
        labels = labels[np.arange(rows) % len(labels)]
    return EvalInputs(take(inputs.feed, 0, rows), inputs.source, labels)


def benchmark_models(original: Subject, artifacts: list[Subject], inputs: EvalInputs, settings: BenchmarkSettings,
                     *, device: str = "cpu", workdir: Path | None = None, warnings: list[str] | None = None,
                     on_progress: Callable[[float], None] | None = None) -> list[BenchmarkResult]:
    """Measure the original, then each artifact against the original's outputs on the same rows."""
    subjects = [original, *artifacts]
    inputs = common_rows(inputs, subjects)
    results: list[BenchmarkResult] = []
    reference: np.ndarray | None = None
    for index, subject in enumerate(subjects):
        def report(fraction: float, index: int = index) -> None:
            if on_progress is not None:
                on_progress((index + fraction) / len(subjects))

        log.info("benchmarking %s (%s)", subject.path.name, subject.format)
        result, outputs = measure(subject, inputs, settings, reference, device=device, workdir=workdir,
                                  warnings=warnings, on_progress=report)
        if subject.artifact_index is None:
            reference = outputs
        results.append(result)
    notes = add_warnings(results, settings.max_accuracy_drop)
    if warnings is not None:
        warnings.extend(notes)
    return results
