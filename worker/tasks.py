"""Celery tasks: thin, idempotent wrappers. The job row decides whether there is anything to do."""

from __future__ import annotations

from app.core.broker import RUN_JOB_TASK, RUN_TRIAL_TASK
from worker.celery_app import celery_app
from worker.executor import execute_job
from worker.trials import execute_trial


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Claim job `job_id` and run it; a duplicate or stale delivery finds nothing to claim and returns."""
    return execute_job(job_id)


@celery_app.task(name=RUN_TRIAL_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_trial(trial_id: str) -> str:
    """Claim trial `trial_id` of an `auto` job and run it; a duplicate delivery, or one after the job's own worker
    took the trial, finds nothing to claim and returns."""
    return execute_trial(trial_id)
