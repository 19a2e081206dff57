"""Celery configuration shared by the API (which only sends tasks) and the workers.

The job row in SQL is the truth; the broker only carries job ids. Tasks are idempotent (they claim the job
with a conditional UPDATE), so `acks_late` redelivery and the reaper's re-sends are safe.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from app.core.config import Settings, get_settings

RUN_JOB_TASK = "deepopt.run_job"
RUN_TRIAL_TASK = "deepopt.run_trial"
QUEUES = ("cpu", "gpu")


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.celery_broker_url
    config: dict[str, Any] = {
        "broker_url": url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": "cpu",
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "broker_connection_timeout": 5,
    }
    if url.startswith("filesystem://"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
        # The filesystem transport has no fanout exchange worth relying on; jobs are cancelled via SQL.
        config["worker_enable_remote_control"] = False
    elif url.startswith(("redis://", "rediss://")):
        # Above the longest job: recovery of lost jobs comes from the reaper, not from Redis redelivery.
        config["broker_transport_options"] = {"visibility_timeout": int(settings.job_timeout_s) + 3600}
    return config


def make_celery(settings: Settings | None = None, name: str = "deepopt") -> Celery:
    settings = settings or get_settings()
    celery = Celery(name)
    celery.conf.update(celery_config(settings))
    return celery


@lru_cache
def get_sender() -> Celery:
    return make_celery(name="deepopt-api")


def send_run_job(job_id: str, queue: str) -> None:
    """Enqueue `run_job(job_id)` on `queue`. Called after the job row is committed."""
    get_sender().send_task(RUN_JOB_TASK, args=[job_id], queue=queue)


def send_run_trial(trial_id: str, queue: str) -> None:
    """Enqueue `run_trial(trial_id)` on `queue` (an `auto` job's trial). Called after the trial row is committed."""
    get_sender().send_task(RUN_TRIAL_TASK, args=[trial_id], queue=queue)


def broker_ready(timeout: float = 3.0) -> bool:
    try:
        with get_sender().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False
