"""Prometheus metrics: request counts and latencies (per route template); jobs by status, queue depth (jobs and
broker messages), pass and job durations, worker heartbeats and webhook deliveries, all read from SQL (and the
broker) at scrape time, so every API replica reports the same truth."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.broker import QUEUES
from app.core.config import get_settings
from app.core.db import get_sessionmaker
from app.db.models import JOB_STATUSES, Job, MetricHistogram, WebhookDelivery, WorkerHeartbeat, utcnow
from app.services.histograms import DURATION_BUCKETS, HELP, JOB_DURATION, PASS_DURATION

log = logging.getLogger("deepopt.metrics")
REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "deepopt_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "deepopt_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=REGISTRY
)


class JobCollector(Collector):
    """Read at scrape time from SQL (and the broker), so that every API replica reports the same numbers."""

    def collect(self) -> Iterable[Metric]:
        by_status = GaugeMetricFamily("deepopt_jobs", "Jobs by status", labels=["status"])
        depth = GaugeMetricFamily("deepopt_queue_depth", "Queued jobs per queue", labels=["queue"])
        oldest = GaugeMetricFamily("deepopt_queue_oldest_age_seconds", "Age of the oldest queued job per queue",
                                   labels=["queue"])
        running = GaugeMetricFamily("deepopt_jobs_running", "Running jobs per queue", labels=["queue"])
        now = utcnow()
        with get_sessionmaker()() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            queued = {
                queue: (count, first)
                for queue, count, first in session.execute(
                    select(Job.queue, func.count(), func.min(Job.created_at))
                    .where(Job.status == "queued").group_by(Job.queue)
                ).all()
            }
            active = dict(session.execute(select(Job.queue, func.count()).where(Job.status == "running")
                                          .group_by(Job.queue)).all())
            histograms = list(session.scalars(select(MetricHistogram)))
            workers = list(session.scalars(select(WorkerHeartbeat)))
            deliveries = dict(session.execute(select(WebhookDelivery.status, func.count())
                                              .group_by(WebhookDelivery.status)).all())
        for status in JOB_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        for queue in sorted(set(queued) | set(QUEUES)):
            count, first = queued.get(queue, (0, None))
            depth.add_metric([queue], count)
            oldest.add_metric([queue], _age(now, first))
            running.add_metric([queue], active.get(queue, 0))
        yield from (by_status, depth, oldest, running)
        yield from _broker_depth()
        yield from _histograms(histograms)
        yield from _workers(workers, now)
        webhooks = GaugeMetricFamily("deepopt_webhook_deliveries", "Webhook deliveries by status", labels=["status"])
        for status in ("pending", "delivered", "failed"):
            webhooks.add_metric([status], deliveries.get(status, 0))
        yield webhooks


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max((now - then).total_seconds(), 0.0)


def _histograms(rows: list[MetricHistogram]) -> Iterable[Metric]:
    families: dict[str, HistogramMetricFamily] = {}
    for name in (PASS_DURATION, JOB_DURATION):
        families[name] = HistogramMetricFamily(name, HELP[name], labels=["pass_type"])
    for row in rows:
        family = families.get(row.name)
        if family is None:
            continue
        per_bound = row.buckets if isinstance(row.buckets, dict) else {}
        buckets, cumulative = [], 0
        for bound in DURATION_BUCKETS:
            cumulative += int(per_bound.get(repr(bound), 0))
            buckets.append((repr(bound), float(cumulative)))
        buckets.append(("+Inf", float(row.count)))
        family.add_metric([row.label], buckets, float(row.sum))
    yield from families.values()


def _workers(rows: list[WorkerHeartbeat], now: datetime) -> Iterable[Metric]:
    stale_after = get_settings().stale_after_s
    beats = GaugeMetricFamily("deepopt_worker_last_heartbeat_timestamp_seconds",
                              "Unix time of each worker's last heartbeat", labels=["worker", "queues"])
    ages = GaugeMetricFamily("deepopt_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat",
                             labels=["worker", "queues"])
    busy = GaugeMetricFamily("deepopt_worker_busy", "1 while a worker runs a job", labels=["worker", "queues"])
    done = CounterMetricFamily("deepopt_worker_jobs", "Jobs each worker ran", labels=["worker", "queues"])
    alive: dict[tuple[str, str], int] = {(q, s): 0 for q in QUEUES for s in ("alive", "stale")}
    for row in rows:
        labels = [row.id, row.queues]
        age = _age(now, row.heartbeat_at)
        beats.add_metric(labels, row.heartbeat_at.timestamp())
        ages.add_metric(labels, age)
        busy.add_metric(labels, 1.0 if row.current_job_id else 0.0)
        done.add_metric(labels, float(row.jobs_done))
        for queue in row.queues.split(","):
            key = (queue.strip(), "alive" if age <= stale_after else "stale")
            alive[key] = alive.get(key, 0) + 1
    workers = GaugeMetricFamily("deepopt_workers", "Workers by queue, alive (heartbeat fresh) or stale",
                                labels=["queue", "state"])
    for (queue, state), count in sorted(alive.items()):
        workers.add_metric([queue, state], count)
    yield from (workers, beats, ages, busy, done)


def _broker_depth() -> Iterable[Metric]:
    """Messages waiting in the broker per queue (Redis lists, or the filesystem transport's files)."""
    family = GaugeMetricFamily("deepopt_broker_queue_messages", "Messages waiting in the broker per queue",
                               labels=["queue"])
    settings = get_settings()
    url = settings.celery_broker_url
    try:
        if url.startswith(("redis://", "rediss://")):
            from app.core.notify import _publisher

            client = _publisher()
            for queue in QUEUES:
                family.add_metric([queue], float(client.llen(queue)))
        elif url.startswith("filesystem://"):
            folder = settings.broker_dir / "queue"
            for queue in QUEUES:
                family.add_metric([queue], float(sum(1 for _ in folder.glob(f"*.{queue}.msg"))))
    except Exception as exc:  # the broker may be down; /readyz says so
        log.debug("broker depth unavailable: %s", exc)
        return
    yield family


REGISTRY.register(JobCollector())


class MetricsMiddleware:
    """Counts and times every request by route template. Pure ASGI: Starlette's `@app.middleware("http")` wraps
    each response in a stream through a task group, which cost a quarter of a job poll's time (`make bench-load`).
    The latency is to the response's start (as before: an event stream counts until its headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled series by (method, route, status), found once instead of through `labels()` per request.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _series(self, method: str, template: str, status: int) -> tuple[Counter, Histogram]:
        key = (method, template, status)
        series = self._children.get(key)
        if series is None:
            series = (REQUESTS.labels(method, template, str(status)), LATENCY.labels(method, template))
            self._children[key] = series
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        started = False

        def observe(status: int) -> None:
            template = getattr(scope.get("route"), "path", "unmatched")
            counter, latency = self._series(scope["method"], template, status)
            counter.inc()
            latency.observe(time.perf_counter() - start)

        async def send_observed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            if not started:
                observe(500)
