"""Cumulative Prometheus histograms kept in SQL: workers observe, every API replica reports the same totals."""

from __future__ import annotations

import logging
import math

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.core.db import session_scope
from app.db.models import MetricHistogram

log = logging.getLogger("deepopt.histograms")

# Seconds: a pass on a tiny model takes well under a second, a fine-tune hours.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                    7200.0, 21600.0)
PASS_DURATION = "deepopt_pass_duration_seconds"
JOB_DURATION = "deepopt_job_duration_seconds"
HELP = {
    PASS_DURATION: "Time spent in each pass of succeeded jobs, by pass type",
    JOB_DURATION: "Run time of succeeded jobs (claim to result), by each pass type the job contains",
}


def observe(name: str, label: str, value: float, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
    """Add one observation (a row lock serialises concurrent workers; a first insert race is retried)."""
    if not math.isfinite(value) or value < 0:
        return
    for _ in range(3):
        try:
            with session_scope() as session:
                row = session.scalar(
                    select(MetricHistogram).where(MetricHistogram.name == name, MetricHistogram.label == label)
                    .with_for_update()
                )
                if row is None:
                    row = MetricHistogram(name=name, label=label[:64], buckets={}, count=0, sum=0.0)
                    session.add(row)
                # Counts per upper bound (not cumulative), keyed by the bound, so the bounds may change later.
                counts = dict(row.buckets) if isinstance(row.buckets, dict) else {}
                bound = next((b for b in buckets if value <= b), None)
                if bound is not None:
                    counts[repr(bound)] = int(counts.get(repr(bound), 0)) + 1
                row.buckets = counts
                row.count = (row.count or 0) + 1
                row.sum = (row.sum or 0.0) + value
            return
        except IntegrityError:
            continue
        except Exception:
            log.exception("could not record %s{%s}", name, label)
            return
