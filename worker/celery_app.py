"""The Celery app of the workers: broker from settings, late acks, prefetch 1, and the reaper thread."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from app.core.broker import make_celery

celery_app = make_celery(name="deepopt-worker")
celery_app.conf.include = ["worker.tasks"]

log = logging.getLogger("deepopt.worker")
_stop_reaper = threading.Event()


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    from worker.reaper import reaper_loop

    thread = threading.Thread(target=reaper_loop, args=(_stop_reaper,), name="deepopt-reaper", daemon=True)
    thread.start()
    log.info("reaper started")


@worker_shutdown.connect
def _stop(**_: object) -> None:
    _stop_reaper.set()
