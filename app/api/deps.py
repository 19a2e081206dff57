"""Dependencies injected into routes: the DB session, storage, settings and the caller's tenant."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.api.problems import ProblemError
from app.core.config import Settings, get_settings
from app.core.db import get_sessionmaker
from app.storage import LocalStorage

LOCAL_TENANT = "local"


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


@lru_cache
def get_storage() -> LocalStorage:
    return LocalStorage(get_settings().storage_dir)


def get_tenant(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> str:
    """The tenant of the API key in `Authorization: Bearer KEY`; open mode (no keys set) is one local tenant."""
    keys = settings.tenant_keys()
    if not keys:
        return LOCAL_TENANT
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        for key, tenant in keys.items():
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                return tenant
    raise ProblemError(
        401, "a valid API key is required: Authorization: Bearer KEY", code="unauthorized",
        headers={"WWW-Authenticate": "Bearer"},
    )


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[LocalStorage, Depends(get_storage)]
TenantDep = Annotated[str, Depends(get_tenant)]
