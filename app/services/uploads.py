"""Streaming multipart uploads: the file part goes straight to a hashed temp file, capped while it streams.

Starlette's own form parsing spools the whole body before a route sees it; here the limit cuts the upload off
as soon as it is crossed, and memory stays flat whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import MultipartParser, parse_options_header

from app.api.problems import FieldProblem, ProblemError, field_error
from app.storage import IncomingFile, Storage, StoredFile, TooLarge

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class UploadedForm:
    file: IncomingFile | None = None
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


async def receive_upload(request: Request, storage: Storage, limit: int) -> UploadedForm:
    """Parse a multipart body with one `file` part and small text fields; raise a 4xx ProblemError on bad input.

    The caller owns `form.file` and must `commit()` or `discard()` it.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ProblemError(
            415, "the body must be multipart/form-data with a `file` part", code="unsupported_media_type",
            errors=[FieldProblem(field="file", message="expected multipart/form-data")],
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MAX_FIELD_BYTES * 4:
        raise _too_large(limit)

    form = UploadedForm()
    state: dict[str, object] = {"name": None, "filename": None, "value": bytearray(), "headers": {}}
    header_field = bytearray()
    header_value = bytearray()
    errors: list[ProblemError] = []

    def on_part_begin() -> None:
        state.update(name=None, filename=None, value=bytearray(), headers={})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        state["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if state["name"] == "file":
            if form.file is not None:
                errors.append(field_error(422, "file", "only one file part is allowed"))
                return
            state["filename"] = filename.decode("utf-8", "replace") if filename is not None else "upload"
            form.file = storage.incoming(limit)
            form.filename = str(state["filename"])

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if errors:
            return
        chunk = data[start:end]
        if state["name"] == "file" and form.file is not None:
            form.file.write(chunk)  # raises TooLarge
        else:
            value = state["value"]
            assert isinstance(value, bytearray)
            value.extend(chunk)
            if len(value) > MAX_FIELD_BYTES:
                errors.append(field_error(413, str(state["name"]), "form field too large"))

    def on_part_end() -> None:
        if state["name"] and state["name"] != "file":
            value = state["value"]
            assert isinstance(value, bytearray)
            form.fields[str(state["name"])] = value.decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if errors:
                break
        else:
            parser.finalize()
    except TooLarge:
        if form.file is not None:
            form.file.discard()
        raise _too_large(limit) from None
    except ProblemError:
        if form.file is not None:
            form.file.discard()
        raise
    except Exception as exc:  # a malformed multipart body
        if form.file is not None:
            form.file.discard()
        raise ProblemError(400, f"malformed multipart body: {exc}", code="malformed_body") from None
    if errors:
        if form.file is not None:
            form.file.discard()
        raise errors[0]
    if form.file is None:
        raise field_error(422, "file", "a `file` part is required", code="missing_file")
    form.file.finish()
    if form.file.size_bytes == 0:
        form.file.discard()
        raise field_error(422, "file", "the file is empty", code="empty_file")
    return form


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413, f"the upload is larger than the limit of {limit} bytes", code="too_large",
        errors=[FieldProblem(field="file", message=f"larger than {limit} bytes")],
    )


@dataclass(frozen=True)
class AcceptedUpload:
    stored: StoredFile
    info: dict[str, Any]
    filename: str
    name: str


async def accept_upload(
    request: Request, storage: Storage, limit: int, inspect: Callable[[Path], dict[str, Any]], default_name: str,
    quota_check: Callable[[int], None] | None = None,
) -> AcceptedUpload:
    """Receive the file, inspect it (in a thread: inspection blocks), and keep it only if inspection accepts it.

    `quota_check(bytes)` raises when the tenant may not store that many more bytes: it runs before the body is
    read (with the declared length) and again with the real size.
    """
    declared = request.headers.get("content-length", "")
    if quota_check is not None:
        await run_in_threadpool(quota_check, int(declared) if declared.isdigit() else 0)
    form = await receive_upload(request, storage, limit)
    assert form.file is not None
    try:
        if quota_check is not None:
            await run_in_threadpool(quota_check, form.file.size_bytes)
        info = await run_in_threadpool(inspect, form.file.path)
        stored = await run_in_threadpool(form.file.commit)  # an object store upload blocks
    except BaseException:
        form.file.discard()
        raise
    # Only the last path component of a client's filename is kept, and only as a label.
    filename = (form.filename or default_name).replace("\\", "/").rsplit("/", 1)[-1][:255] or default_name
    return AcceptedUpload(stored, info, filename, (form.fields.get("name") or filename)[:255])
