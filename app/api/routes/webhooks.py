"""Webhooks: a job's delivery record, and the tenant's signing secret."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.problems import ProblemError
from app.api.routes.jobs import get_job_or_404
from app.db.models import WebhookDelivery
from app.schemas import WebhookDeliveryRead, WebhookSecretRead
from app.services.webhooks import rotate_secret, secret_for

router = APIRouter(tags=["webhooks"])


@router.get("/v1/jobs/{job_id}/webhook", response_model=WebhookDeliveryRead)
def read_job_webhook(job_id: str, session: SessionDep, tenant: TenantDep) -> WebhookDeliveryRead:
    """The delivery of a job's `callback_url`: attempts, the last answer or error, when it was delivered."""
    job = get_job_or_404(session, tenant, job_id)
    row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id))
    if row is None:
        raise ProblemError(404, f"job {job_id} has no callback_url", code="not_found")
    return WebhookDeliveryRead(
        id=row.id, job_id=row.job_id, url=row.url, status=row.status,  # type: ignore[arg-type]
        event=row.event, attempts=row.attempts, last_status_code=row.last_status_code, last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None, created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


@router.get("/v1/webhooks/secret", response_model=WebhookSecretRead)
def read_webhook_secret(session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> WebhookSecretRead:
    """The secret that signs this tenant's webhooks (created on first use)."""
    secret, source = secret_for(session, tenant, settings)
    return WebhookSecretRead(tenant=tenant, secret=secret, source=source)  # type: ignore[arg-type]


@router.post("/v1/webhooks/secret/rotate", response_model=WebhookSecretRead)
def rotate_webhook_secret(session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> WebhookSecretRead:
    """Replace this tenant's secret; deliveries from now on are signed with the new one."""
    if tenant in settings.tenant_webhook_secrets():
        raise ProblemError(409, "this tenant's secret is set by the operator (DEEPOPT_WEBHOOK_SECRETS)",
                           code="secret_configured")
    return WebhookSecretRead(tenant=tenant, secret=rotate_secret(session, tenant), source="generated")
