"""`make run`: apply migrations, then run the API and one worker until Ctrl-C stops both.

    python -m app.launcher            # API + worker
    python -m app.launcher worker     # a worker alone (DEEPOPT_QUEUES=cpu or gpu)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from app.core.config import get_settings
from app.core.migrate import upgrade

log = logging.getLogger("deepopt.launcher")


def worker_command(queues: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--pool=solo", "--concurrency=1", "-Q", queues, "--loglevel=INFO",
        "--without-gossip", "--without-mingle", "-n", f"deepopt-{queues.replace(',', '-')}-{os.getpid()}@%h",
    ]


def api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port),
            "--timeout-graceful-shutdown", "20"]


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    mode = argv[0] if argv else "all"
    upgrade()
    log.info("data under %s; database %s; broker %s", settings.data_dir,
             settings.sqlalchemy_url.split("@")[-1], settings.celery_broker_url.split("@")[-1])
    commands = []
    if mode in ("all", "api"):
        commands.append(api_command(settings.host, settings.port))
    if mode in ("all", "worker"):
        commands.append(worker_command(settings.queues))
    children = [subprocess.Popen(cmd, start_new_session=True) for cmd in commands]
    if mode in ("all", "api"):
        log.info("API on http://%s:%d (docs at /docs); Ctrl-C stops everything", settings.host, settings.port)

    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C: do not wait for running jobs
            for child in children:
                if child.poll() is None:
                    child.kill()
            return
        stopping = True
        log.info("stopping (a running job is finished first; Ctrl-C again to force)")
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            break
        if not stopping and any(code is not None for code in codes):
            log.error("a process exited (%s); stopping the others", codes)
            _stop(signal.SIGTERM, None)
        time.sleep(0.2)
    return 0 if stopping else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
