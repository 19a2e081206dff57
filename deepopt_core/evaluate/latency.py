"""Timing: warm-up, then `runs` timed runs per batch size, on the same inputs for every model.

Peak memory is the largest growth of the process's resident set (sampled from /proc/self/statm between runs)
over its size before the model was loaded: loading plus running, in this process.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepopt_core.evaluate.inputs import take
from deepopt_core.evaluate.runners import Runner, rss_bytes
from deepopt_core.specs import BenchmarkSettings

log = logging.getLogger("deepopt.evaluate")


@dataclass
class Timing:
    """Latencies in milliseconds by batch size, throughput in samples/s, peak RSS growth in bytes."""

    p50_ms: dict[int, float] = field(default_factory=dict)
    p95_ms: dict[int, float] = field(default_factory=dict)
    p99_ms: dict[int, float] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0


class MemoryWatch:
    """Tracks the largest RSS growth over a baseline taken at creation."""

    def __init__(self) -> None:
        gc.collect()
        self.baseline = rss_bytes()
        self.peak = self.baseline

    def sample(self) -> None:
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return max(self.peak - self.baseline, 0)


def time_runner(runner: Runner, feed: dict[str, np.ndarray], settings: BenchmarkSettings, memory: MemoryWatch,
                batch_sizes: list[int] | None = None,
                on_progress: Callable[[float], None] | None = None) -> Timing:
    """Time `runner` at each batch size on rows of `feed` (wrapping around when the feed is smaller).

    Args:
        runner: the loaded model.
        feed: input rows (at least one).
        settings: runs, warm-up, batch sizes.
        memory: sampled between runs.
        batch_sizes: overrides ``settings.batch_sizes`` (a model with a static batch dimension).
        on_progress: receives the fraction of batch sizes done.
    """
    timing = Timing()
    sizes = batch_sizes or settings.batch_sizes
    for index, size in enumerate(sizes):
        batch = take(feed, 0, size)
        for _ in range(settings.warmup):
            runner(batch)
        memory.sample()
        times = np.empty(settings.runs)
        for run in range(settings.runs):
            begin = time.perf_counter()
            runner(batch)
            times[run] = time.perf_counter() - begin
            if run % 10 == 0:
                memory.sample()
        memory.sample()
        # Throughput from the timed calls alone: the memory samples between runs are not the model's time.
        total = float(times.sum())
        timing.p50_ms[size] = float(np.percentile(times, 50) * 1000)
        timing.p95_ms[size] = float(np.percentile(times, 95) * 1000)
        timing.p99_ms[size] = float(np.percentile(times, 99) * 1000)
        timing.throughput[size] = float(size * settings.runs / max(total, 1e-9))
        if on_progress is not None:
            on_progress((index + 1) / len(sizes))
    timing.peak_memory_bytes = memory.growth
    return timing


def timing_metrics(timing: Timing) -> dict[str, Any]:
    """Per-batch latencies and throughput for ``BenchmarkResult.metrics`` (keys are batch sizes as strings)."""
    return {
        "latency_ms_p50_by_batch": {str(k): round(v, 4) for k, v in timing.p50_ms.items()},
        "latency_ms_p95_by_batch": {str(k): round(v, 4) for k, v in timing.p95_ms.items()},
        "latency_ms_p99_by_batch": {str(k): round(v, 4) for k, v in timing.p99_ms.items()},
        "throughput_per_s_by_batch": {str(k): round(v, 2) for k, v in timing.throughput.items()},
    }
