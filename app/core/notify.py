"""Wake-ups for event streams. The job row stays the truth: a stream re-reads it every `events_poll_s` whatever
happens here. With the Redis broker, whoever changes a job row also publishes on `deepopt:job:<id>` so that
streams re-read it at once instead of at their next poll; with the embedded broker, polling alone serves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from app.core.config import get_settings

log = logging.getLogger("deepopt.notify")
CHANNEL_PREFIX = "deepopt:job:"


def _redis_url() -> str | None:
    url = get_settings().celery_broker_url
    return url if url.startswith(("redis://", "rediss://")) else None


@lru_cache
def _publisher() -> Any:
    import redis

    return redis.Redis.from_url(_redis_url() or "", socket_timeout=2, socket_connect_timeout=2)


def notify_job(job_id: str) -> None:
    """Tell event streams that job `job_id` changed (after the change is committed). Best effort."""
    if _redis_url() is None:
        return
    try:
        _publisher().publish(CHANNEL_PREFIX + job_id, b"1")
    except Exception as exc:  # streams still poll the row
        log.debug("could not publish a change of job %s: %s", job_id, exc)


class Wakeups:
    """One Redis pattern subscription per API process; each stream waits on an asyncio.Event of its job."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_listener(self, url: str) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._task = loop.create_task(self._listen(url), name="deepopt-job-wakeups")

    async def _listen(self, url: str) -> None:
        import redis.asyncio as aioredis

        while True:
            client = aioredis.Redis.from_url(url)
            try:
                pubsub = client.pubsub()
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    job_id = (channel.decode() if isinstance(channel, bytes) else str(channel))[len(CHANNEL_PREFIX):]
                    for event in self._waiters.get(job_id, ()):
                        event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("job wake-ups unavailable (%s); streams poll", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        url = _redis_url()
        if url is not None:
            self._ensure_listener(url)
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    self._waiters.pop(job_id, None)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._task = None


WAKEUPS = Wakeups()


async def wait_for_change(event: asyncio.Event, timeout: float) -> None:
    """Return when `event` is set (a published change) or after `timeout` seconds, whichever is first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()
