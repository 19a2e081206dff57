"""Admin API: issue, list and revoke API keys (stored as hashes; a key is shown once, when created)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.api.deps import AdminDep, SessionDep
from app.api.problems import ProblemError
from app.db.models import ApiKey
from app.services.keys import create_key, revoke_key

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class KeyCreate(BaseModel):
    # strict: `"admin": 0` or `"admin": "yes"` is a 422, not silently a bool.
    model_config = ConfigDict(extra="forbid", strict=True)

    tenant: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    name: str = Field("", max_length=255)
    admin: bool = False


class KeyRead(BaseModel):
    id: str
    tenant: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(..., description="The key itself: shown this once, stored only as a hash.")


def _read(row: ApiKey) -> KeyRead:
    return KeyRead(id=row.id, tenant=row.tenant, name=row.name, prefix=row.prefix, admin=row.is_admin,
                   created_at=row.created_at, revoked_at=row.revoked_at)


@router.post("/keys", status_code=201, response_model=KeyCreated)
def issue_key(body: KeyCreate, session: SessionDep, _admin: AdminDep) -> KeyCreated:
    """Issue a key for a tenant."""
    row, key = create_key(session, tenant=body.tenant, name=body.name, admin=body.admin)
    return KeyCreated(**_read(row).model_dump(), key=key)


@router.get("/keys", response_model=list[KeyRead])
def list_keys(session: SessionDep, _admin: AdminDep) -> list[KeyRead]:
    """Every key, newest first (the keys themselves are not stored)."""
    return [_read(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc()))]


@router.delete("/keys/{key_id}", status_code=204, response_class=Response, operation_id="revoke_key")
def revoke(key_id: str, session: SessionDep, _admin: AdminDep) -> Response:
    """Revoke a key: it stops working at once."""
    if revoke_key(session, key_id) is None:
        raise ProblemError(404, f"no key {key_id}", code="not_found")
    return Response(status_code=204)
