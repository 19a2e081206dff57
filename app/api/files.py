"""Serving stored blobs with ETag, Content-Length and single-range `Range` support."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from app.api.problems import ProblemError
from app.storage import Storage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def blob_response(
    request: Request, storage: Storage, key: str, size: int, filename: str, media_type: str
) -> Response:
    etag = f'"{key}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{_safe_filename(filename)}"',
    }
    if request.headers.get("if-none-match") in (etag, key):
        return Response(status_code=304, headers=headers)
    if not storage.exists(key):
        raise ProblemError(410, "the file is no longer stored", code="file_gone")
    range_header = request.headers.get("range")
    if range_header and request.headers.get("if-range", etag) == etag:
        match = _RANGE.match(range_header.strip())
        start, end = _parse_range(match, size) if match else (None, None)
        if start is None or end is None:
            raise ProblemError(
                416, f"unsatisfiable range {range_header!r} for {size} bytes", code="bad_range",
                headers={"Content-Range": f"bytes */{size}"},
            )
        headers.update({"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)})
        return StreamingResponse(
            storage.iter_range(key, start, end), status_code=206, media_type=media_type, headers=headers
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(storage.iter_range(key), media_type=media_type, headers=headers)


def _parse_range(match: re.Match[str], size: int) -> tuple[int | None, int | None]:
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        return None, None
    if first == "":  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            return None, None
        return max(size - length, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None, None
    return start, min(end, size - 1)


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200] or "download"
