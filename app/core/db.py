"""Engine, sessions and the declarative base. SQLite gets WAL and a busy timeout so the API and workers,
in separate processes, can write concurrently."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.core.config import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def sqlite_engine(url: str, *, timeout_s: float, pool_size: int, max_overflow: int,
                  pragmas: tuple[str, ...]) -> Engine:
    """A SQLite engine whose every new connection runs `pragmas` (``"busy_timeout=0"``, ...) first."""
    engine = create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False},
                           pool_size=pool_size, max_overflow=max_overflow)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Room for a connection per request the API serves at once (sync routes run in anyio's 40 threads); the
        # default 5 + 10 made 32 concurrent clients wait out the pool timeout (`make bench-load`). All of them are
        # kept: a connection past `pool_size` is closed on its return, and opening one (pragmas, the schema read
        # on its first query) cost a fifth of a job poll under 32 clients.
        return sqlite_engine(url, timeout_s=30, pool_size=40, max_overflow=10, pragmas=(
            "journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON", "synchronous=NORMAL"))
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().sqlalchemy_url)


@contextmanager
def autocommit_connection() -> Iterator[Connection]:
    """A pooled connection outside any transaction, for reads that need no snapshot across statements: on
    PostgreSQL a transaction's BEGIN and the ROLLBACK when the connection goes back to the pool are two more round
    trips, which a job poll would pay on every request."""
    with get_engine().connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for workers and scripts)."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
