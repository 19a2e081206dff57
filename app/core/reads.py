"""The reads of the polled routes (a job, a page of jobs, an event stream's state), awaited on the event loop.

A sync route runs in anyio's threadpool, and that hop, with the GIL hand-overs of forty threads waiting on the
database, cost more than the read itself: `GET /v1/jobs/{id}` served 0.38x a bare FastAPI endpoint on PostgreSQL
and 0.51x on SQLite through it, 0.6x and 0.8x awaited here (`make bench-load`). Writes, and reads that need a
session (a job's artifacts and benchmarks, read once per version), stay in the threadpool on `app.core.db`.

- PostgreSQL: psycopg's asyncio connections, in autocommit (no BEGIN/ROLLBACK round trips). No ping before each
  read: a connection the server dropped (a restart) fails its statement, SQLAlchemy invalidates the pool, and the
  read runs once more on a new connection.
- SQLite: on the event-loop thread itself. In WAL mode a reader does not wait for writers, so a read is a walk of
  pages the process has cached (microseconds). For the rare lock a reader can still meet (another connection in
  exclusive locking mode, a crashed writer's recovery) the loop's connections have no busy timeout: the read fails
  at once and is done in the threadpool on the normal engine, which waits out the lock there, never on the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, Row
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable

from app.core.config import get_settings
from app.core.db import autocommit_connection, sqlite_engine

# Connections an API process's polls hold at once: each holds one only for its round trip, so 32 concurrent
# pollers used about 10 (`make bench-load`); past `pool_size` a connection is closed on its return.
ASYNC_POOL_SIZE = 20
ASYNC_MAX_OVERFLOW = 20
_ASYNC_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncEngine] = weakref.WeakKeyDictionary()
_LOOP_SQLITE_ENGINES: dict[str, Engine] = {}


def _is_sqlite() -> bool:
    return get_settings().sqlalchemy_url.startswith("sqlite")


def async_engine() -> AsyncEngine:
    """This event loop's engine: asyncio connections belong to the loop that opened them."""
    loop = asyncio.get_running_loop()
    engine = _ASYNC_ENGINES.get(loop)
    if engine is None:
        engine = create_async_engine(get_settings().sqlalchemy_url, isolation_level="AUTOCOMMIT",
                                     pool_size=ASYNC_POOL_SIZE, max_overflow=ASYNC_MAX_OVERFLOW)
        _ASYNC_ENGINES[loop] = engine
    return engine


def loop_sqlite_engine() -> Engine:
    """SQLite connections for reads on the event-loop thread: read-only, and failing at once on a lock. One engine
    per database URL, so that new settings (a new data dir) never read an old database."""
    url = get_settings().sqlalchemy_url
    engine = _LOOP_SQLITE_ENGINES.get(url)
    if engine is None:
        engine = sqlite_engine(url, timeout_s=0, pool_size=4, max_overflow=4,
                               pragmas=("busy_timeout=0", "query_only=1"))
        _LOOP_SQLITE_ENGINES[url] = engine
    return engine


def _sqlite_locked(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _threadpool_read(statement: Executable, params: Mapping[str, Any]) -> Sequence[Row[Any]]:
    with autocommit_connection() as connection:
        return list(connection.execute(statement, params))


async def read_rows(statement: Executable, params: Mapping[str, Any] | None = None) -> Sequence[Row[Any]]:
    """The rows of a read-only statement, outside any transaction, without leaving the event loop's thread but to
    wait out a SQLite lock."""
    params = params or {}
    if _is_sqlite():
        try:
            with loop_sqlite_engine().connect() as connection:
                return list(connection.execute(statement, params))
        except OperationalError as exc:
            if not _sqlite_locked(exc):
                raise
        return await run_in_threadpool(_threadpool_read, statement, params)
    for attempt in (1, 2):
        try:
            async with async_engine().connect() as connection:
                return list(await connection.execute(statement, params))
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == 2:
                raise
    raise AssertionError("unreachable")


async def dispose_read_engines() -> None:
    """Close this loop's connections (at the API's shutdown, and between tests)."""
    engine = _ASYNC_ENGINES.pop(asyncio.get_running_loop(), None)
    if engine is not None:
        await engine.dispose()
    dispose_loop_sqlite_engines()


def dispose_loop_sqlite_engines() -> None:
    """Close the event loop's SQLite connections (they need no loop to close)."""
    while _LOOP_SQLITE_ENGINES:
        _LOOP_SQLITE_ENGINES.popitem()[1].dispose()
