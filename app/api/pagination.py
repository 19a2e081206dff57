"""Keyset pagination over (created_at, id), newest first, with opaque cursors."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import Select, tuple_

from app.api.problems import field_error


def encode_cursor(created_at: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), row_id
    except Exception:
        raise field_error(422, "cursor", "not a cursor returned by this API") from None


def paginate(query: Select[Any], table: Any, limit: int, cursor: str | None) -> Select[Any]:
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(tuple_(table.created_at, table.id) < tuple_(created_at, row_id))
    return query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)


def page_of(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, None
