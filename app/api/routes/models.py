"""Uploaded models: upload (streamed, hashed, inspected), list, read, download, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.files import blob_response
from app.api.pagination import page_of, paginate
from app.api.problems import ProblemError
from app.db.models import Model, utcnow
from app.schemas import ModelRead, Page
from app.services.inspection import inspect_model_file
from app.services.jobs import active_jobs_for_model
from app.services.keys import check_storage_quota
from app.services.uploads import accept_upload

router = APIRouter(prefix="/v1/models", tags=["models"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "ONNX, TorchScript, "
                                 ".pt2, or a Hugging Face folder as .zip/.tar.gz"},
                        "name": {"type": "string"},
                    },
                }
            }
        },
    }
}


def to_read(model: Model) -> ModelRead:
    info = model.info
    return ModelRead(
        id=model.id, name=model.name, format=model.format, filename=model.filename, size_bytes=model.size_bytes,
        sha256=model.sha256, num_parameters=int(info.get("num_parameters", 0)), inputs=info.get("inputs", []),
        outputs=info.get("outputs", []), info=info, created_at=model.created_at,
    )


def get_model_or_404(session: SessionDep, tenant: str, model_id: str) -> Model:
    model = session.get(Model, model_id)
    if model is None or model.tenant != tenant or model.deleted_at is not None:
        raise ProblemError(404, f"no model {model_id}", code="not_found")
    return model


@router.post("", status_code=201, response_model=ModelRead, openapi_extra=UPLOAD_BODY)
async def upload_model(
    request: Request, session: SessionDep, tenant: TenantDep, storage: StorageDep, settings: SettingsDep
) -> ModelRead:
    """Upload a model; its format is detected from the bytes and it is inspected before it is accepted."""
    upload = await accept_upload(
        request, storage, settings.max_upload_bytes,
        lambda path: inspect_model_file(path, settings), "model",
        quota_check=lambda size: check_storage_quota(session, tenant, settings.tenant_max_storage_bytes, size),
    )
    stored = upload.stored
    model = Model(
        tenant=tenant, name=upload.name, format=upload.info["format"], filename=upload.filename,
        size_bytes=stored.size_bytes, sha256=stored.sha256, storage_key=stored.key, info=upload.info,
    )
    session.add(model)
    session.commit()
    return to_read(model)


@router.get("", response_model=Page[ModelRead])
def list_models(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> Page[ModelRead]:
    """List models, newest first."""
    query = select(Model).where(Model.tenant == tenant, Model.deleted_at.is_(None))
    rows, next_cursor = page_of(list(session.scalars(paginate(query, Model, limit, cursor))), limit)
    return Page[ModelRead](items=[to_read(m) for m in rows], next_cursor=next_cursor)


@router.get("/{model_id}", response_model=ModelRead)
def read_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelRead:
    """One model with its inspection."""
    return to_read(get_model_or_404(session, tenant, model_id))


@router.get("/{model_id}/content", response_class=Response)
def download_model(
    model_id: str, request: Request, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> Response:
    """The uploaded bytes."""
    model = get_model_or_404(session, tenant, model_id)
    return blob_response(
        request, storage, model.storage_key, model.size_bytes, model.filename, "application/octet-stream"
    )


@router.delete("/{model_id}", status_code=204, response_class=Response)
def delete_model(model_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Delete a model; refused (409) while a queued or running job uses it."""
    model = get_model_or_404(session, tenant, model_id)
    if active_jobs_for_model(session, model.id):
        raise ProblemError(409, "a queued or running job uses this model", code="model_in_use")
    model.deleted_at = utcnow()
    session.commit()
    return Response(status_code=204)
