"""Prometheus metrics: request counts and latencies (per route template), jobs by status and queue depth
(read from the job table at scrape time, so every API replica reports the same truth)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.core.db import get_sessionmaker
from app.db.models import JOB_STATUSES, Job

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "deepopt_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "deepopt_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=REGISTRY
)


class JobCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        by_status = GaugeMetricFamily("deepopt_jobs", "Jobs by status", labels=["status"])
        depth = GaugeMetricFamily("deepopt_queue_depth", "Queued jobs per queue", labels=["queue"])
        with get_sessionmaker()() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            queued = dict(
                session.execute(
                    select(Job.queue, func.count()).where(Job.status == "queued").group_by(Job.queue)
                ).all()
            )
        for status in JOB_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        for queue in sorted(set(queued) | {"cpu", "gpu"}):
            depth.add_metric([queue], queued.get(queue, 0))
        yield by_status
        yield depth


REGISTRY.register(JobCollector())


async def metrics_middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    start = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, template, str(status)).inc()
        LATENCY.labels(request.method, template).observe(time.perf_counter() - start)
