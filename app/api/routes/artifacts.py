"""Artifacts a job produced: metadata and bytes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import SessionDep, StorageDep, TenantDep
from app.api.files import blob_response
from app.api.problems import ProblemError
from app.api.routes.jobs import artifact_read
from app.db.models import Artifact
from app.schemas import ArtifactRead

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])

MEDIA_TYPES = {"onnx": "application/octet-stream", "json": "application/json", "html": "text/html"}


def get_artifact_or_404(session: SessionDep, tenant: str, artifact_id: str) -> Artifact:
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or artifact.tenant != tenant:
        raise ProblemError(404, f"no artifact {artifact_id}", code="not_found")
    return artifact


@router.get("/{artifact_id}", response_model=ArtifactRead)
def read_artifact(artifact_id: str, request: Request, session: SessionDep, tenant: TenantDep) -> ArtifactRead:
    """An artifact's metadata and download URL."""
    return artifact_read(request, get_artifact_or_404(session, tenant, artifact_id))


@router.get("/{artifact_id}/content", response_class=Response)
def download_artifact(
    artifact_id: str, request: Request, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> Response:
    """The artifact's bytes, with `ETag` (its sha256) and `Range` support."""
    artifact = get_artifact_or_404(session, tenant, artifact_id)
    media_type = MEDIA_TYPES.get(artifact.format, "application/octet-stream")
    return blob_response(request, storage, artifact.storage_key, artifact.size_bytes, artifact.filename, media_type)
