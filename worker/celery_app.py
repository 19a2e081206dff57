"""The Celery app of the workers: broker from settings, late acks, prefetch 1, and the background threads of
every worker: the reaper, the webhook sender and the worker's own heartbeat row."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from app.core.broker import make_celery

celery_app = make_celery(name="deepopt-worker")
celery_app.conf.include = ["worker.tasks"]

log = logging.getLogger("deepopt.worker")
_stop_threads = threading.Event()


@worker_ready.connect
def _start_threads(**_: object) -> None:
    from app.services.webhooks import webhook_loop
    from worker.presence import presence_loop
    from worker.reaper import reaper_loop

    for name, target in (("reaper", reaper_loop), ("webhooks", webhook_loop), ("presence", presence_loop)):
        threading.Thread(target=target, args=(_stop_threads,), name=f"deepopt-{name}", daemon=True).start()
    log.info("reaper, webhook sender and heartbeat started")
    _log_sandbox()


def _log_sandbox() -> None:
    """Say once, at start, which walls of the sandbox this machine's kernel lets the job children raise."""
    from deepopt_core.sandbox import probe

    report = probe()
    if report.missing:
        log.warning("sandbox of job children: NOT enforced here: %s (docs/security.md; DEEPOPT_SANDBOX=strict "
                    "refuses to run jobs without seccomp and Landlock)", ", ".join(report.missing))
    else:
        log.info("sandbox of job children: network namespace, seccomp, Landlock ABI %d (files, TCP, process "
                 "scopes), no capabilities", report.landlock_abi)


@worker_shutdown.connect
def _stop(**_: object) -> None:
    from worker.presence import leave

    _stop_threads.set()
    leave()
