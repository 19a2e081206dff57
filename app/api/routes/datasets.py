"""Datasets: `.npz` arrays named after a model's inputs (plus optional `labels`) or `.jsonl` text records."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.problems import ProblemError
from app.api.routes.models import UPLOAD_BODY
from app.db.models import Dataset
from app.schemas import DatasetRead
from app.services.inspection import inspect_dataset_file
from app.services.keys import check_storage_quota
from app.services.uploads import accept_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def to_read(dataset: Dataset) -> DatasetRead:
    info = dataset.info
    return DatasetRead(
        id=dataset.id, name=dataset.name, format=dataset.format, filename=dataset.filename,  # type: ignore[arg-type]
        size_bytes=dataset.size_bytes, sha256=dataset.sha256, num_rows=int(info.get("num_rows", 0)),
        arrays=info.get("arrays", {}), has_labels=bool(info.get("has_labels")), created_at=dataset.created_at,
    )


@router.post("", status_code=201, response_model=DatasetRead, openapi_extra=UPLOAD_BODY)
async def upload_dataset(
    request: Request, session: SessionDep, tenant: TenantDep, storage: StorageDep, settings: SettingsDep
) -> DatasetRead:
    """Upload a dataset for calibration, evaluation or training."""
    upload = await accept_upload(
        request, storage, settings.max_upload_bytes, inspect_dataset_file, "dataset",
        quota_check=lambda size: check_storage_quota(session, tenant, settings.tenant_max_storage_bytes, size),
    )
    stored = upload.stored
    dataset = Dataset(
        tenant=tenant, name=upload.name, format=upload.info["format"], filename=upload.filename,
        size_bytes=stored.size_bytes, sha256=stored.sha256, storage_key=stored.key, info=upload.info,
    )
    session.add(dataset)
    session.commit()
    return to_read(dataset)


@router.get("/{dataset_id}", response_model=DatasetRead)
def read_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetRead:
    """One dataset with its inspection."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant != tenant:
        raise ProblemError(404, f"no dataset {dataset_id}", code="not_found")
    return to_read(dataset)
