"""Uploads stream: the body is read chunk by chunk into a temp file, never held in memory, and a body over the
limit is cut off as soon as it crosses it (an endless body gets its 413 after about `limit` bytes)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

CHUNK = 64 * 1024
BOUNDARY = "deepopt-test-boundary"
HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n").encode()


def call(app: Any, body_chunks: Any) -> tuple[int, dict[str, Any], int]:
    """Send a multipart POST /v1/models to the ASGI app straight from `body_chunks` (no Content-Length);
    returns the status, the JSON body and how many bytes the app read."""
    consumed = 0
    sent: list[dict[str, Any]] = []
    chunks = iter(body_chunks)

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/models", "raw_path": b"/v1/models", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), consumed


def endless() -> Any:
    yield HEAD
    block = b"\x5a" * CHUNK
    while True:
        yield block


def sized(total: int) -> Any:
    yield HEAD
    block = b"\x5a" * CHUNK
    for _ in range(total // CHUNK):
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def streaming_app(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from app.core.config import get_settings
    from app.main import create_app

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1024 * 1024)
    return create_app()


def test_an_endless_upload_is_cut_off_at_the_limit(streaming_app: Any, app_env: Path) -> None:
    status, problem, consumed = call(streaming_app, endless())
    assert status == 413 and problem["code"] == "too_large", problem
    assert problem["errors"][0]["field"] == "file"
    # Read no further than the limit and the chunk that crossed it.
    assert 1024 * 1024 < consumed <= 1024 * 1024 + len(HEAD) + 2 * CHUNK
    assert [p for p in (app_env / "blobs").rglob("*") if p.is_file()] == []


def test_an_upload_streams_through_without_being_held_in_memory(streaming_app: Any, app_env: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.config import get_settings

    total = 24 * 1024 * 1024
    monkeypatch.setattr(get_settings(), "max_upload_bytes", total + CHUNK)
    call(streaming_app, sized(CHUNK))  # warm up: imports and caches are not the upload's memory
    tracemalloc.start()
    try:
        status, problem, consumed = call(streaming_app, sized(total))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Not a model (so 415), but only after all of it was received, hashed and written to a temp file.
    assert status == 415, problem
    assert consumed >= total
    assert peak < 4 * 1024 * 1024, f"{peak} bytes allocated at the peak of a {total}-byte upload"
    assert [p for p in (app_env / "blobs").rglob("*") if p.is_file()] == []
