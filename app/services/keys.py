"""API keys of tenants, stored only as sha256 hashes; quotas and a per-key request rate limit."""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.problems import ProblemError
from app.core.db import get_engine
from app.db.models import ApiKey, Artifact, Dataset, Job, Model, utcnow

KEY_PREFIX = "dok_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, tenant: str, name: str = "", admin: bool = False) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the key itself, which is not stored and cannot be shown again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=tenant, name=name or tenant, key_sha256=hash_key(key), prefix=key[:12], is_admin=admin)
    session.add(row)
    session.commit()
    KEY_CACHE.put_keys_issued(_database(session), True)  # this process closes an open server at once
    return row, key


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    KEY_CACHE.forget(key_id)
    return row


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str | None
    is_admin: bool


class KeyCache:
    """Callers of recently seen valid keys, by key hash, for `ttl_s` seconds: a client polling a job does not cost
    a database round trip per request to be recognised. Only valid keys are kept (a new key works at once); a
    revoked key stops working at once in the API process that revoked it and within `ttl_s` in the others. It also
    keeps whether any key was issued: a server with no key configured is open until then, and closes within `ttl_s`
    of a key issued by another process (at once for one issued by this process)."""

    def __init__(self, ttl_s: float = 5.0, max_entries: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        # Whether any key was issued, by database URL: an open server (no key configured) needs to know on every
        # request. By URL, because tests point one process at many databases.
        self._keys_issued: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Caller | None:
        entry = self._entries.get(key_hash)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, key_hash: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic(), caller)

    def forget(self, key_id: str) -> None:
        with self._lock:
            for key_hash in [h for h, (_, caller) in self._entries.items() if caller.key_id == key_id]:
                del self._entries[key_hash]

    def keys_issued(self, database: str) -> bool | None:
        """Whether a key had been issued as of at most `ttl_s` ago; None: not known."""
        entry = self._keys_issued.get(database)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put_keys_issued(self, database: str, issued: bool) -> None:
        with self._lock:
            self._keys_issued[database] = (time.monotonic(), issued)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._keys_issued.clear()


KEY_CACHE = KeyCache()


def cached_caller(key: str) -> Caller | None:
    """The caller of a valid key seen in the last `ttl_s` seconds, without touching the database."""
    return KEY_CACHE.get(hash_key(key))


def caller_for_key(session: Session, key: str) -> Caller | None:
    key_hash = hash_key(key)
    cached = KEY_CACHE.get(key_hash)
    if cached is not None:
        return cached
    row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == key_hash, ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    caller = Caller(row.tenant, row.id, row.is_admin)
    KEY_CACHE.put(key_hash, caller)
    return caller


def _database(session: Session) -> str:
    bind = session.get_bind()
    return str(bind.engine.url)


def keys_issued(session: Session) -> bool:
    """Whether any key was ever issued (a revoked one counts: the server stays closed); cached for `ttl_s`."""
    issued = session.scalar(select(ApiKey.id).limit(1)) is not None
    KEY_CACHE.put_keys_issued(_database(session), issued)
    return issued


def cached_keys_issued() -> bool | None:
    """`keys_issued` as of at most `ttl_s` ago, without touching the database; None: not known."""
    return KEY_CACHE.keys_issued(str(get_engine().url))


def storage_used(session: Session, tenant: str) -> int:
    total = 0
    for table in (Model, Dataset, Artifact):
        total += int(session.scalar(select(func.coalesce(func.sum(table.size_bytes), 0))
                                    .where(table.tenant == tenant)) or 0)
    return total


def check_storage_quota(session: Session, tenant: str, limit: int | None, incoming: int = 0) -> None:
    if limit is None:
        return
    used = storage_used(session, tenant)
    if used + incoming > limit:
        raise ProblemError(
            429, f"storage quota of {limit} bytes reached ({used} used, {incoming} more asked for); delete models "
            "or ask for a larger quota", code="storage_quota", headers={"Retry-After": "3600"},
        )


def check_job_quota(session: Session, tenant: str, limit: int | None) -> None:
    if limit is None:
        return
    active = int(session.scalar(select(func.count()).select_from(Job)
                                .where(Job.tenant == tenant, Job.status.in_(("queued", "running")))) or 0)
    if active >= limit:
        raise ProblemError(
            429, f"{active} jobs are queued or running, the limit of this tenant is {limit}; retry later",
            code="job_quota", headers={"Retry-After": "30"},
        )


class RateLimiter:
    """Token buckets per key, in this process: `per_minute` requests, refilled continuously."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str, per_minute: int | None) -> None:
        if not per_minute:
            return
        now = time.monotonic()
        rate = per_minute / 60.0
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - stamp) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / rate)
                raise ProblemError(429, f"more than {per_minute} requests a minute with this key",
                                   code="rate_limited", headers={"Retry-After": str(wait)})
            self._buckets[key] = (tokens - 1.0, now)


RATE_LIMITER = RateLimiter()
