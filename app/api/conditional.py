"""Conditional GET of jobs: `If-None-Match` against a weak entity tag, and job bodies serialised once per tag.

A job's tag changes with every change a client can see (`app.services.views.job_etag_part`), so a poller whose
job did not change gets a `304` with no body, and one whose job did gets a body serialised at most once per
change and API process: a poll is one small query either way."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

NOT_MODIFIED_RESPONSE: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the `ETag` sent in `If-None-Match` is still current; no body."},
}
ETAG_HEADER: dict[str, Any] = {
    "ETag": {"description": "A weak entity tag of this body: send it as `If-None-Match` to get a 304 while it "
             "holds.", "schema": {"type": "string"}},
}


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 `If-None-Match` with the weak comparison: `*`, or any listed tag with the same opaque part."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


class BodyCache:
    """Serialised job bodies by (entity tag, download URL prefix), least recently used first out, at most
    `max_bytes` in all. An entry never goes stale: a change to the job is a new tag."""

    def __init__(self, max_bytes: int = 16 * 1024**2) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            body = self._entries.get(key)
            if body is not None:
                self._entries.move_to_end(key)
            return body

    def put(self, key: tuple[str, str], body: bytes) -> None:
        with self._lock:
            if key in self._entries or len(body) > self.max_bytes:
                return
            self._entries[key] = body
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


JOB_BODIES = BodyCache()
