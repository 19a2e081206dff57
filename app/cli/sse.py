"""Server-sent events for the CLI: a parser (the WHATWG event-stream rules) and a follower of
`GET /v1/jobs/{id}/events` that reconnects with `Last-Event-ID` until the job's final event."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the lines of a `text/event-stream` body (line endings already split off)."""
    event, event_id, retry = "", None, None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(event or "message", "\n".join(data), event_id, retry)
            elif retry is not None:  # a reconnection time alone is not an event; pass it on all the same
                yield Event("", "", event_id, retry)
            event, data, retry = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            event_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)


class StreamError(Exception):
    def __init__(self, response: httpx.Response):
        self.status_code = response.status_code
        try:
            self.problem: dict[str, Any] = dict(response.json())
        except Exception:
            self.problem = {"status": response.status_code, "detail": response.text[:500]}
        super().__init__(self.problem.get("detail") or f"HTTP {response.status_code}")


def follow_job(http: httpx.Client, job_id: str, on_state: Callable[[dict[str, Any]], None],
               last_event_id: str | None = None, max_failures: int = 30) -> dict[str, Any]:
    """Follow a job's events until its final `job` event, which is returned. A dropped connection (an API restart,
    a proxy's idle cut) is resumed with `Last-Event-ID`; a 4xx is raised as StreamError."""
    retry_s, failures = 1.0, 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            timeout = httpx.Timeout(10.0, read=60.0)  # the server sends a comment every 15 s when idle
            with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
                if response.status_code == 204:  # it had ended and we had its final event: read the job
                    final = http.get(f"/v1/jobs/{job_id}")
                    if final.status_code >= 400:
                        raise StreamError(final)
                    return dict(final.json())
                if response.status_code >= 400:
                    response.read()
                    if response.status_code < 500:
                        raise StreamError(response)
                    raise httpx.RemoteProtocolError(f"HTTP {response.status_code}")
                for event in parse_events(response.iter_lines()):
                    if event.retry is not None:
                        retry_s = event.retry / 1000.0
                    if event.id is not None:
                        last_event_id = event.id
                    if event.event == "state":
                        failures = 0
                        on_state(event.json())
                    elif event.event == "job":
                        return dict(event.json())
        except httpx.TransportError:
            failures += 1
            if failures > max_failures:
                raise
        time.sleep(retry_s)
