"""Who a worker is, in the one shape every row and report uses.

A worker process is ``host:pid`` (its `worker` heartbeat row, the trial answers and reports show that). Each job or
trial it claims is held under ``host:pid:nonce``, a fresh identity per claim: a worker whose claim the reaper took
away (because it looked dead) and which then comes back can never finish the row a second claim now holds, even
in the same process.
"""

from __future__ import annotations

import os
import socket
import uuid


def worker_name() -> str:
    """This worker process: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_identity() -> str:
    """A fresh identity for one claim of a job or trial by this process: ``host:pid:nonce``."""
    return f"{worker_name()}:{uuid.uuid4().hex[:8]}"


def name_of(identity: str | None) -> str | None:
    """The ``host:pid`` of a claim's identity (a name passes through unchanged)."""
    return identity.rsplit(":", 1)[0] if identity and identity.count(":") >= 2 else identity
