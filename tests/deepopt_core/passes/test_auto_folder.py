"""The dispatch folder of `auto` from both sides: the search's runner (the job's child) and a stand-in for the
job's worker, each going only through :class:`TrialFolder`, the one definition of the layout and its messages.

tests/worker/test_trials.py and tests/e2e/test_auto_fanout.py run the real worker side on a database."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from deepopt_core.passes.auto.folder import TrialAnswer, TrialFolder, TrialMeasurement
from deepopt_core.passes.auto.remote import DispatchTrialRunner
from deepopt_core.passes.auto.search import Measurement, TrialNotStarted
from deepopt_core.passes.auto.trials import OnnxTrialRunner
from tests.deepopt_core.passes.test_auto import ScriptedRunner

pytestmark = [pytest.mark.timeout(60)]
HERE, ELSEWHERE, LATE = ([{"type": "quantize", "mode": mode}] for mode in ("dynamic", "static", "int4"))


class AdoptingRunner(ScriptedRunner):
    def __init__(self) -> None:
        super().__init__({"quantize:dynamic": (0.97, 6.0, 300)})
        self.adopted: list[tuple[int, bytes]] = []

    def adopt(self, number: int, path: Path) -> None:
        self.adopted.append((number, path.read_bytes()))


def wait_for(read: Any) -> Any:
    deadline = time.monotonic() + 30
    while (value := read()) is None or value == []:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return value


def test_a_wave_goes_out_and_every_kind_of_answer_comes_back(tmp_path: Path) -> None:
    local = AdoptingRunner()
    runner = DispatchTrialRunner(cast(OnnxTrialRunner, local), tmp_path)
    worker = TrialFolder(tmp_path)
    assert runner.parallelism() == 1  # before the worker has said how many workers serve the queue
    worker.write_capacity(3)
    assert runner.parallelism() == 3
    seen: dict[str, Any] = {}

    def serve() -> None:
        [(name, wave)] = wait_for(lambda: list(worker.waves(set())))
        seen["wave"] = wave
        keys = {t.number: t.key for t in wave.trials}
        worker.assign(keys[1], "here:1")  # the job's own worker took it: the child runs it itself
        seen["done"] = wait_for(lambda: worker.done(keys[1]))
        worker.result_model(keys[2]).write_bytes(b"model from elsewhere")
        worker.write_result(keys[2], TrialAnswer(status="succeeded", seconds=2.0, worker="there:7",
                                                 measurement=TrialMeasurement(quality=0.96, latency_ms=5.0,
                                                                              size_bytes=250)))
        worker.write_result(keys[3], TrialAnswer(status="skipped", error="the minutes ran out"))
        seen["unseen_after"] = list(worker.waves({name}))

    thread = threading.Thread(target=serve)
    thread.start()
    answers = runner.run_many([(1, HERE), (2, ELSEWHERE), (3, LATE)], deadline_s=60.0)
    thread.join()
    wave = seen["wave"]
    assert wave.bundle == runner.bundle.name and wave.deadline_s == 60.0 and [t.recipe for t in wave.trials] == [
        HERE, ELSEWHERE, LATE]
    assert seen["unseen_after"] == []
    here, elsewhere, late = answers[1], answers[2], answers[3]
    assert isinstance(here, Measurement) and here.details["worker"] == "here:1" and local.ran == ["quantize:dynamic"]
    done = seen["done"]
    assert done.status == "succeeded" and done.measurement.quality == 0.97 and done.seconds is not None
    assert isinstance(elsewhere, Measurement) and (elsewhere.quality, elsewhere.details["worker"]) == (0.96, "there:7")
    assert local.adopted == [(2, b"model from elsewhere")]
    assert isinstance(late, TrialNotStarted) and "minutes" in str(late)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # every file was renamed into place


def test_a_measurement_that_is_not_finite_survives_the_folder(tmp_path: Path) -> None:
    folder = TrialFolder(tmp_path)
    folder.write_done("k", TrialAnswer(status="succeeded", measurement=TrialMeasurement(
        quality=float("nan"), latency_ms=float("inf"), size_bytes=1)))
    answer = folder.done("k")
    assert answer is not None and answer.measurement is not None and answer.measurement.latency_ms == float("inf")
