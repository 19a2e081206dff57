"""The polled reads awaited on the event loop (app/core/reads.py): a SQLite lock is waited out in the threadpool,
never on the loop; a PostgreSQL connection the server dropped is replaced without the caller seeing it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from app.db.models import Job
from tests.conftest import POSTGRES_ADMIN_URL, reset_app_caches

JOB_COUNT = select(func.count()).select_from(Job)


def test_a_locked_sqlite_database_is_waited_out_off_the_event_loop(app_env: Path) -> None:
    from app.core.db import get_engine
    from app.core.reads import read_rows

    get_engine().dispose()  # exclusive locking mode needs the only connection to the database
    locked, release = threading.Event(), threading.Event()

    def hold_exclusive_lock() -> None:
        connection = sqlite3.connect(app_env / "deepopt.db", isolation_level=None)
        connection.execute("PRAGMA locking_mode=EXCLUSIVE")
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("UPDATE job SET version = version + 1")
        locked.set()
        release.wait(10)
        connection.execute("COMMIT")
        connection.close()

    holder = threading.Thread(target=hold_exclusive_lock)
    holder.start()
    assert locked.wait(10)

    async def main() -> tuple[list[tuple[int]], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.5, release.set)
        started = time.monotonic()
        rows = await read_rows(JOB_COUNT)
        assert time.monotonic() - started >= 0.4  # it did wait for the lock...
        ticking.cancel()
        return [tuple(row) for row in rows], ticks

    rows, ticks = asyncio.run(main())
    holder.join()
    assert rows == [(0,)]
    assert ticks >= 20  # ...and the loop went on meanwhile: 10 ms ticks through the half-second wait


@pytest.fixture
def postgres_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The app on a fresh, migrated PostgreSQL schema."""
    from app.core.migrate import upgrade

    schema = f"deepopt_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("DEEPOPT_DATABASE_URL", url)
    monkeypatch.setenv("DEEPOPT_DATA_DIR", str(tmp_path / "data"))
    reset_app_caches()
    upgrade()
    try:
        yield schema
    finally:
        reset_app_caches()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.postgres
def test_a_dropped_postgresql_connection_is_replaced_without_an_error(postgres_env: str) -> None:
    from app.core.reads import dispose_read_engines, read_rows

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")

    async def main() -> tuple[int, int, list[tuple[int]]]:
        try:
            first = (await read_rows(text("SELECT pg_backend_pid()"))).pop()[0]
            with admin.connect() as connection:  # what a server restart does to a pooled connection
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            second = (await read_rows(text("SELECT pg_backend_pid()"))).pop()[0]
            return first, second, [tuple(row) for row in await read_rows(JOB_COUNT)]
        finally:
            await dispose_read_engines()

    first, second, rows = asyncio.run(main())
    admin.dispose()
    assert first != second and rows == [(0,)]
