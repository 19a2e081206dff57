"""The one supervisor of a worker's core children (jobs and trials): it reads the child's events, beats the row,
stops the child on a cancel, a lost row or the time limit, and reads a crash as a code and a message.

Stand-in children (scripts run inside the real sandbox) say what a real run would, so no model is needed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.core.config import Settings
from worker.child import ChildState, Exit, supervise
from worker.rows import Verdict

pytestmark = [pytest.mark.timeout(120)]

EVENTS = r"""
import sys
import time
print('{"event":"progress","fraction":0.25,"stage":"prune 1/2 loss 0.5","pass_index":0,"pass_type":"prune",'
      '"metrics":{"loss":0.5}}', flush=True)
print("a library's own print", flush=True)
print('{"event":"progress","fraction":0.5,"stage":"prune 2/2 loss 0.4","pass_index":0,"pass_type":"prune"}', flush=True)
time.sleep(0.3)
print('{"event":"progress","fraction":0.75,"stage":"benchmark"}', flush=True)
print('{"event":"result"}', flush=True)
"""
FOREVER = "import time\nwhile True:\n    time.sleep(0.05)\n"
OUT_OF_MEMORY = "import sys\nsys.stderr.write('x' * 5000 + ' MemoryError: cannot allocate')\nsys.exit(1)\n"
FAILS = ('print(\'{"event":"error","code":"invalid_pipeline","message":"no such pass"}\', flush=True)\n'
         "raise SystemExit(3)\n")


def run(tmp_path: Path, source: str, beat=None, **settings: float | int | None) -> tuple[Exit, list[str]]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    (scratch / "child.py").write_text(source)
    beats: list[str] = []

    def record(state: ChildState) -> Verdict:
        beats.append(state.stage)
        return beat(len(beats)) if beat is not None else "ok"

    config = Settings(data_dir=tmp_path / "data", **{"heartbeat_interval_s": 0.2, **settings})  # type: ignore[arg-type]
    ended = supervise([], scratch, config, label="test child", beat=record, module=str(scratch / "child.py"))
    return ended, beats


def test_events_are_read_and_the_row_beaten_until_the_child_finishes(tmp_path: Path) -> None:
    ended, beats = run(tmp_path, EVENTS)
    assert ended.how == "exited" and ended.finished, ended.stderr_tail()
    state = ended.state
    assert state.progress == 0.75 and state.stage == "benchmark" and state.metrics == {"loss": 0.5}
    assert state.lines == ["a library's own print"]  # not an event, never data
    assert list(state.pass_seconds) == ["prune"] and state.pass_seconds["prune"] >= 0.3  # by type, not by stage text
    assert beats


def test_a_cancel_stops_the_child_at_the_next_beat(tmp_path: Path) -> None:
    began = time.monotonic()
    ended, beats = run(tmp_path, FOREVER, beat=lambda n: "cancel" if n >= 2 else "ok")
    assert ended.how == "cancelled" and not ended.finished and ended.returncode < 0
    assert len(beats) == 2 and time.monotonic() - began < 30


def test_a_lost_row_stops_the_child_and_a_failing_beat_does_not(tmp_path: Path) -> None:
    def beat(n: int) -> Verdict:
        if n < 3:
            raise RuntimeError("the database is restarting")
        return "lost"

    ended, beats = run(tmp_path, FOREVER, beat=beat)
    assert ended.how == "lost" and len(beats) == 3


def test_the_time_limit_stops_the_child(tmp_path: Path) -> None:
    ended, _ = run(tmp_path, FOREVER, job_timeout_s=1.0)
    assert ended.how == "timeout"
    assert ended.failure("job", "optimization process") == ("timeout", "the job ran longer than 1 s")


def test_a_crash_reads_as_out_of_memory_only_under_a_memory_limit(tmp_path: Path) -> None:
    ended, _ = run(tmp_path, OUT_OF_MEMORY, job_memory_limit_bytes=4 * 1024**3)
    code, message = ended.failure("trial", "trial process")
    assert code == "memory_limit" and "DEEPOPT_JOB_MEMORY_LIMIT_BYTES" in message and "exit status 1" in message
    ended, _ = run(tmp_path, OUT_OF_MEMORY, job_memory_limit_bytes=None)
    code, message = ended.failure("job", "optimization process")
    assert code == "internal_error" and message.startswith("the optimization process ended with exit status 1: ")
    assert message.endswith("MemoryError: cannot allocate") and len(message) < 1600  # the tail of stderr only


def test_the_childs_own_failure_is_its_code_and_message(tmp_path: Path) -> None:
    ended, _ = run(tmp_path, FAILS)
    assert ended.how == "exited" and ended.returncode == 3 and not ended.finished
    assert ended.failure("job", "optimization process") == ("invalid_pipeline", "no such pass")
