"""Reports: a job's HTML report and a comparison of several jobs on the same model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from app.api.deps import SessionDep, StorageDep, TenantDep
from app.api.problems import field_error
from app.api.routes.jobs import get_job_or_404
from app.db.models import Job
from app.schemas import Comparison
from app.services.reports import compare_rows, render_report

router = APIRouter(tags=["reports"])
MAX_COMPARED = 50


@router.get("/v1/jobs/{job_id}/report", response_class=HTMLResponse)
def job_report(job_id: str, session: SessionDep, tenant: TenantDep, storage: StorageDep) -> HTMLResponse:
    """A self-contained HTML report: the spec, every output against the original, decisions, the trade-off plot."""
    return HTMLResponse(render_report(get_job_or_404(session, tenant, job_id), storage))


@router.get("/v1/compare", response_model=Comparison)
def compare(
    session: SessionDep,
    tenant: TenantDep,
    jobs: Annotated[str, Query(min_length=1, description="Comma-separated job ids, all on the same model.")],
) -> Comparison:
    """One table of the artifacts of several jobs on the same model, each against the original."""
    ids = [j.strip() for j in jobs.split(",") if j.strip()]
    if not ids or len(ids) > MAX_COMPARED:
        raise field_error(422, "jobs", f"give 1 to {MAX_COMPARED} comma-separated job ids")
    rows: list[Job] = []
    for job_id in dict.fromkeys(ids):
        job = session.get(Job, job_id)
        if job is None or job.tenant != tenant:
            raise field_error(422, "jobs", f"no job {job_id}")
        rows.append(job)
    models = {job.model_id for job in rows}
    if len(models) > 1:
        raise field_error(422, "jobs", f"the jobs are on different models: {sorted(models)}")
    return Comparison(model_id=rows[0].model_id, rows=compare_rows(rows))
