"""Dependencies injected into routes: the DB session, storage, settings and the caller's tenant."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.problems import ProblemError
from app.core.config import Settings, get_settings
from app.core.db import get_sessionmaker
from app.services.keys import Caller
from app.storage import Storage, make_storage

LOCAL_TENANT = "local"
# Declares the bearer scheme in the OpenAPI spec (clients generate auth from it); a missing or malformed header is
# not refused here but below, where an open server (no keys anywhere) still lets the caller in.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="An API key: `deepopt keys create --tenant NAME` or the admin API issues one.")


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


@lru_cache
def get_storage() -> Storage:
    return make_storage(get_settings())


async def current_settings() -> Settings:
    """The settings, without the threadpool hop FastAPI gives a plain `def` dependency."""
    return get_settings()


async def get_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Caller:
    """Who calls: the tenant of the key in `Authorization: Bearer KEY` (a key of `DEEPOPT_API_KEYS` or one issued
    by the admin API). With no key configured anywhere the server is open, as one local tenant.

    A coroutine, so that a caller the key cache knows costs no threadpool hop and no database session; the
    database is read (in the threadpool) only for a key not seen in the last few seconds. Routes take it through
    `TenantDep` or `AdminDep`, never both (the rate limit would count the request twice)."""
    from app.services.keys import RATE_LIMITER, cached_caller, cached_keys_issued

    settings = get_settings()
    token = credentials.credentials.strip() if credentials is not None else ""
    caller = configured_caller(settings, token)
    if caller is None and token:
        caller = cached_caller(token)
    if caller is None:
        keys_configured = bool(settings.tenant_keys()) or bool(settings.admin_key)
        if not keys_configured and cached_keys_issued() is False:  # open, as of a few seconds ago
            caller = Caller(LOCAL_TENANT, None, is_admin=True)
        elif token or not keys_configured:
            caller = await run_in_threadpool(stored_caller, settings, token)
    if caller is None:
        raise ProblemError(
            401, "a valid API key is required: Authorization: Bearer KEY", code="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    RATE_LIMITER.check(caller.key_id or caller.tenant, settings.rate_limit_per_minute)
    return caller


def configured_caller(settings: Settings, token: str) -> Caller | None:
    """The caller of a key set in the environment (`DEEPOPT_API_KEYS`, `DEEPOPT_ADMIN_KEY`), if `token` is one."""
    if not token:
        return None
    caller: Caller | None = None
    for key, tenant in settings.tenant_keys().items():
        if hmac.compare_digest(key.encode(), token.encode()):
            caller = Caller(tenant, None, is_admin=False)
    if settings.admin_key and hmac.compare_digest(settings.admin_key.encode(), token.encode()):
        caller = Caller("admin", None, is_admin=True)
    return caller


def stored_caller(settings: Settings, token: str) -> Caller | None:
    """The caller of an issued key, from the database; the local tenant if the server is open; None: refused."""
    from app.services.keys import caller_for_key, keys_issued

    with get_sessionmaker()() as session:
        if token:
            caller = caller_for_key(session, token)
            if caller is not None:
                return caller
        if settings.tenant_keys() or settings.admin_key or keys_issued(session):
            return None
    return Caller(LOCAL_TENANT, None, is_admin=True)


# These two call `get_caller` instead of depending on it: FastAPI's solving of each level of dependencies cost
# more than the rest of a cached caller's check.
async def get_tenant(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    return (await get_caller(credentials)).tenant


async def get_admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> Caller:
    caller = await get_caller(credentials)
    if not caller.is_admin:
        raise ProblemError(403, "this needs an admin key", code="forbidden")
    return caller


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(current_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
TenantDep = Annotated[str, Depends(get_tenant)]
AdminDep = Annotated[Caller, Depends(get_admin)]
