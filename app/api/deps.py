"""Dependencies injected into routes: the DB session, storage, settings and the caller's tenant."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
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


def get_caller(
    settings: Annotated[Settings, Depends(get_settings)],
    session: Annotated[Session, Depends(get_session)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Caller:
    """Who calls: the tenant of the key in `Authorization: Bearer KEY` (a key of `DEEPOPT_API_KEYS` or one issued
    by the admin API). With no key configured anywhere the server is open, as one local tenant."""
    from app.services.keys import RATE_LIMITER, any_keys, caller_for_key

    env_keys = settings.tenant_keys()
    token = credentials.credentials.strip() if credentials is not None else ""
    caller: Caller | None = None
    if token:
        for key, tenant in env_keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                caller = Caller(tenant, None, is_admin=False)
        if settings.admin_key and hmac.compare_digest(settings.admin_key.encode(), token.encode()):
            caller = Caller("admin", None, is_admin=True)
        if caller is None:
            caller = caller_for_key(session, token)
    if caller is None:
        if env_keys or settings.admin_key or any_keys(session):
            raise ProblemError(
                401, "a valid API key is required: Authorization: Bearer KEY", code="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        caller = Caller(LOCAL_TENANT, None, is_admin=True)
    RATE_LIMITER.check(caller.key_id or caller.tenant, settings.rate_limit_per_minute)
    return caller


def get_tenant(caller: Annotated[Caller, Depends(get_caller)]) -> str:
    return caller.tenant


def get_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise ProblemError(403, "this needs an admin key", code="forbidden")
    return caller


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
TenantDep = Annotated[str, Depends(get_tenant)]
AdminDep = Annotated[Caller, Depends(get_admin)]
