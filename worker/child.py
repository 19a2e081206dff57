"""The one supervisor of the core child processes a worker starts: a job's run and an `auto` trial.

A child is ``python -m deepopt_core.cli run|trial REQUEST`` inside :mod:`deepopt_core.sandbox`, which before it
imports anything sets PDEATHSIG (the child dies with its worker, even one killed with SIGKILL) and RLIMIT_AS
(`job_memory_limit_bytes`), and then confines itself. :func:`supervise` starts it, reads its
:mod:`deepopt_core.protocol` events from stdout on a thread, keeps stderr in a file, beats the row through the
caller's `beat` (at `heartbeat_interval_s`, and soon after a new stage so event streams show it), stops it when the
row says cancel or lost or when it runs past `job_timeout_s`, and says how it ended: :class:`Exit`, which also
reads a crash (the stderr tail, running out of the address space) as a failure code and message. The callers
(:mod:`worker.executor`, :mod:`worker.trials`) only turn that into their rows.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from app.core.config import Settings
from deepopt_core.protocol import Done, Failure, Progress, parse_event
from deepopt_core.sandbox import child_command, child_env, prepare_scratch
from worker.rows import Verdict

log = logging.getLogger("deepopt.child")

# How running out of address space reads in the child's stderr (Python, C++, glibc, OpenBLAS).
# "failed to map segment": a shared library (libtorch) that cannot be mapped under the address-space limit.
OUT_OF_MEMORY = ("MemoryError", "bad_alloc", "Cannot allocate memory", "Memory allocation", "failed to map segment")
STAGE_WRITE_MIN_S = 0.5  # a new stage is written soon, but the row is not beaten more than twice a second
TICK_S = 0.1
STOP_GRACE_S = 5.0
STDERR_TAIL_CHARS = 2000
Ending = Literal["exited", "cancelled", "lost", "timeout"]


@dataclass
class ChildState:
    """What the child reported on stdout."""

    progress: float = 0.0
    stage: str = "starting"
    metrics: dict[str, Any] | None = None
    error: Failure | None = None
    done: bool = False
    lines: list[str] = field(default_factory=list)
    # Seconds spent in each type of pass (`prune`, `quantize`, `export`, ...), as the events name them.
    pass_seconds: dict[str, float] = field(default_factory=dict)
    _pass_type: str | None = None
    _pass_since: float = 0.0

    def take(self, raw: bytes) -> None:
        """Apply one line of the child's stdout."""
        event = parse_event(raw)
        if isinstance(event, Progress):
            self.progress = event.fraction
            self.stage = (event.stage or self.stage)[:64]
            if event.metrics:
                self.metrics = event.metrics
            self.enter(event.pass_type)
        elif isinstance(event, Failure):
            self.error = event
        elif isinstance(event, Done):
            self.leave()
            self.done = True
        elif raw.strip():
            self.lines.append(raw.decode("utf-8", "replace").strip()[:2000])

    def enter(self, pass_type: str | None, now: float | None = None) -> None:
        """The child now runs a pass of `pass_type` (None: none, it is loading, saving or benchmarking)."""
        now = time.monotonic() if now is None else now
        if pass_type == self._pass_type:
            return
        self.leave(now)
        self._pass_type, self._pass_since = pass_type, now

    def leave(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._pass_type:
            spent = now - self._pass_since
            self.pass_seconds[self._pass_type] = self.pass_seconds.get(self._pass_type, 0.0) + spent
        self._pass_type = None


@dataclass
class Exit:
    """How a supervised child ended."""

    how: Ending
    returncode: int
    state: ChildState
    stderr_path: Path
    timeout_s: float
    memory_limit: int | None

    @property
    def finished(self) -> bool:
        """It ended on its own, with exit status 0, after its Done message."""
        return self.how == "exited" and self.returncode == 0 and self.state.done

    @property
    def reason(self) -> str:
        return f"signal {-self.returncode}" if self.returncode < 0 else f"exit status {self.returncode}"

    def stderr_tail(self) -> str:
        """The last characters the child wrote to stderr."""
        try:
            with open(self.stderr_path, "rb") as stream:
                stream.seek(0, 2)
                stream.seek(max(0, stream.tell() - 4 * STDERR_TAIL_CHARS))
                return stream.read().decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
        except OSError:
            return ""

    def out_of_memory(self, tail: str) -> bool:
        """Under a memory limit, a child killed by SIGKILL (the kernel's OOM killer) or whose stderr says an
        allocation failed ran out of its address space."""
        return bool(self.memory_limit) and (any(s in tail for s in OUT_OF_MEMORY) or self.returncode == -9)

    def failure(self, noun: str, process: str) -> tuple[str, str]:
        """The error code and message of a child that did not finish (`noun`: "job"; `process`: "optimization
        process"): a timeout, the child's own Failure message, running out of memory, or a crash with its stderr."""
        if self.how == "timeout":
            return "timeout", f"the {noun} ran longer than {self.timeout_s:.0f} s"
        if self.state.error is not None:
            return self.state.error.code or "pass_failed", self.state.error.message or "the pipeline failed"
        tail = self.stderr_tail()
        if self.out_of_memory(tail):
            return "memory_limit", (f"the {noun} needed more than the workers' memory limit of {self.memory_limit} "
                                    f"bytes (DEEPOPT_JOB_MEMORY_LIMIT_BYTES); it ended with {self.reason}")
        return "internal_error", f"the {process} ended with {self.reason}: {tail.strip()[-1500:]}"


def sandboxed(args: list[str], scratch: Path, settings: Settings, module: str = "deepopt_core.cli") -> dict[str, Any]:
    """Popen keyword arguments that run `python -m <module> <args>` in the sandbox, confined to `scratch` (which
    holds the child's inputs), with the job memory limit."""
    prepare_scratch(scratch)
    return {
        "args": child_command(args, scratch=scratch, strict=settings.sandbox == "strict",
                              memory_limit=settings.job_memory_limit_bytes, module=module),
        "env": child_env(scratch), "cwd": scratch,
    }


def supervise(args: list[str], scratch: Path, settings: Settings, *, label: str,
              beat: Callable[[ChildState], Verdict], poll: Callable[[float], None] | None = None,
              state: ChildState | None = None, module: str = "deepopt_core.cli") -> Exit:
    """Run `python -m <module> <args>` sandboxed in `scratch` until it ends, is cancelled or lost, or times out.

    Args:
        label: names the child in the log ("job 123").
        beat: writes the row's heartbeat from the state; says whether to go on ("ok"), stop for a cancel
            ("cancel") or stop because this worker no longer holds the row ("lost"). When it raises (the database
            may be restarting), the child goes on and the next beat tries again.
        poll: called about every 0.1 s while the child runs (a job's trial dispatch).
        state: where the child's events go (a fresh one when None).
    """
    state = state if state is not None else ChildState()
    stderr_path = scratch / "stderr.log"
    how: Ending = "exited"
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(stdout=subprocess.PIPE, stderr=stderr, **sandboxed(args, scratch, settings, module))
        assert child.stdout is not None
        reader = threading.Thread(target=_read_events, args=(child.stdout, state), daemon=True)
        reader.start()
        started = time.monotonic()
        next_beat = last_beat = 0.0
        written_stage = ""
        try:
            while child.poll() is None:
                now = time.monotonic()
                if poll is not None:
                    poll(now)
                stage_moved = state.stage != written_stage and now - last_beat >= STAGE_WRITE_MIN_S
                if now >= next_beat or stage_moved:
                    next_beat, last_beat, written_stage = now + settings.heartbeat_interval_s, now, state.stage
                    verdict = _beat(beat, state, label)
                    if verdict != "ok":
                        how = "cancelled" if verdict == "cancel" else "lost"
                        break
                if now - started > settings.job_timeout_s:
                    how = "timeout"
                    break
                time.sleep(TICK_S)
        finally:
            if child.poll() is None:
                stop(child)
        reader.join(timeout=5)
    return Exit(how=how, returncode=int(child.returncode), state=state, stderr_path=stderr_path,
                timeout_s=settings.job_timeout_s, memory_limit=settings.job_memory_limit_bytes)


def _beat(beat: Callable[[ChildState], Verdict], state: ChildState, label: str) -> Verdict:
    try:
        return beat(state)
    except Exception:  # the database may be restarting; keep working and try again at the next beat
        log.exception("%s: heartbeat failed", label)
        return "ok"


def _read_events(stream: IO[bytes], state: ChildState) -> None:
    for raw in iter(stream.readline, b""):
        state.take(raw)


def stop(child: subprocess.Popen[bytes]) -> None:
    """Terminate the child, and kill it when it has not ended within a few seconds."""
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
