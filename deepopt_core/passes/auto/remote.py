"""Trials of the `auto` pass on several workers, as seen from the core: a folder shared with the job's worker.

The search runs in the job's child, which has no database and no broker; it writes the trials it wants run into
the dispatch folder (``trial_dispatch`` in the run request) and the worker that started it answers there. The
layout and its messages are defined once, in :mod:`deepopt_core.passes.auto.folder`, for both sides.

Local-only trials: a recipe that trains on the job's train dataset (structured pruning with `fine_tune`,
`distill`; :func:`deepopt_core.passes.auto.trials.needs_training`) is never written into a wave, since a bundle
carries no train data (and such trials take minutes, longer than fetching it would pay for). The child runs it
itself while the wave's other trials are out, and it has no trial row: its decisions say ``"local_only": true``.

The final choice is still timed here, on the job's own worker (:meth:`TrialRunner.retime` of the finalists,
interleaved with the original): latencies measured on different machines are not comparable, so a remote
trial's latency only orders and rejects candidates, it never decides alone.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from deepopt_core.passes.auto.folder import TrialAnswer, TrialFolder, TrialMeasurement, Wave, WaveTrial
from deepopt_core.passes.auto.search import Measurement, TrialFailed, TrialNotStarted
from deepopt_core.passes.auto.trials import OnnxTrialRunner, needs_training
from deepopt_core.protocol import TrialRequest, write_message

log = logging.getLogger("deepopt.passes.auto")
POLL_S = 0.05
_DISPATCH: dict[str, Path | None] = {"folder": None}
_SEARCHES = itertools.count(1)


def use_dispatch(folder: str | Path | None) -> None:
    """Send the trials of this process's `auto` searches through `folder` (None: run them in process)."""
    _DISPATCH["folder"] = Path(folder) if folder else None


def runner_for(local: OnnxTrialRunner) -> OnnxTrialRunner | DispatchTrialRunner:
    """The runner a search uses: `local` itself, or a dispatching one around it when a folder was given."""
    folder = _DISPATCH["folder"]
    return DispatchTrialRunner(local, folder) if folder is not None else local


def measurement_message(measurement: Measurement) -> TrialMeasurement:
    return TrialMeasurement(quality=measurement.quality, latency_ms=measurement.latency_ms,
                            size_bytes=measurement.size_bytes, details=measurement.details)


def answer_of(outcome: Measurement | TrialFailed) -> TrialAnswer:
    """The answer a trial's outcome is written as."""
    if isinstance(outcome, TrialFailed):
        return TrialAnswer(status="failed", error=str(outcome)[:2000], seconds=outcome.seconds)
    return TrialAnswer(status="succeeded", measurement=measurement_message(outcome), seconds=outcome.seconds)


class DispatchTrialRunner:
    """A :class:`~deepopt_core.passes.auto.search.WaveRunner` over the dispatch folder; the baseline, the
    retiming and the chosen model stay with the in-process runner `local`."""

    def __init__(self, local: OnnxTrialRunner, folder: Path):
        self.local = local
        self.folder = TrialFolder(folder)
        self.search = next(_SEARCHES)
        self.waves = 0
        self.bundle = self.folder.bundle(self.search)

    def baseline(self) -> Measurement:
        measured = self.local.baseline()
        self.local.write_bundle(self.bundle)
        return measured

    def parallelism(self) -> int:
        return self.folder.capacity()

    def run(self, number: int, recipe: list[dict[str, Any]]) -> Measurement:
        outcome = self.run_many([(number, recipe)], deadline_s=float("inf"))[number]
        if isinstance(outcome, TrialFailed):
            raise outcome
        return outcome

    def run_many(self, batch: list[tuple[int, list[dict[str, Any]]]],
                 deadline_s: float) -> dict[int, Measurement | TrialFailed]:
        local_only = [(number, recipe) for number, recipe in batch if needs_training(recipe)]
        batch = [(number, recipe) for number, recipe in batch if not needs_training(recipe)]
        keys = {number: f"s{self.search}-t{number}" for number, _ in batch}
        recipes = dict(batch)
        if batch:
            self.waves += 1
            self.folder.write_wave(self.waves, Wave(
                search=self.search, bundle=self.bundle.name,
                deadline_s=deadline_s if deadline_s != float("inf") else None,
                trials=[WaveTrial(key=keys[number], number=number, recipe=recipe) for number, recipe in batch],
            ))  # fmt: skip
        answers: dict[int, Measurement | TrialFailed] = {}
        for number, recipe in local_only:  # while the others are out
            answers[number] = self._run_local(number, recipe, None)
            answers[number].details["local_only"] = True
        while len(answers) < len(batch) + len(local_only):
            moved = False
            for number, key in keys.items():
                if number in answers:
                    continue
                if (result := self.folder.result(key)) is not None:
                    answers[number] = self._answer(number, key, result)
                elif (assigned := self.folder.assignment(key)) is not None:
                    answers[number] = self._run_here(number, key, recipes[number], assigned.worker)
                else:
                    continue
                moved = True
            if not moved:
                time.sleep(POLL_S)
        return answers

    def _run_local(self, number: int, recipe: list[dict[str, Any]], worker: str | None) -> Measurement | TrialFailed:
        began = time.perf_counter()
        outcome: Measurement | TrialFailed
        try:
            outcome = self.local.run(number, recipe)
        except TrialFailed as exc:
            outcome = exc
        outcome.seconds = time.perf_counter() - began
        outcome.details["worker"] = worker
        return outcome

    def _run_here(self, number: int, key: str, recipe: list[dict[str, Any]],
                  worker: str | None) -> Measurement | TrialFailed:
        outcome = self._run_local(number, recipe, worker)
        self.folder.write_done(key, answer_of(outcome))
        return outcome

    def _answer(self, number: int, key: str, answer: TrialAnswer) -> Measurement | TrialFailed:
        details = {"worker": answer.worker}
        if answer.status == "succeeded" and answer.measurement is not None:
            try:
                self.local.adopt(number, self.folder.result_model(key))
            except Exception as exc:  # a model that does not load here cannot be chosen
                return TrialFailed(f"the trial's model from {answer.worker} does not load: {exc}"[:300],
                                   seconds=answer.seconds, details=details)
            measured = answer.measurement
            return Measurement(measured.quality, measured.latency_ms, measured.size_bytes,
                               {**measured.details, **details}, seconds=answer.seconds)
        if answer.status == "skipped":
            return TrialNotStarted(answer.error or "the minutes budget ran out before it started")
        return TrialFailed(answer.error or f"the trial ended {answer.status}", seconds=answer.seconds,
                           details=details)

    def retime(self, numbers: list[int]) -> dict[int, float]:
        return self.local.retime(numbers)

    def model_of(self, number: int) -> Any:
        return self.local.model_of(number)

    def close(self) -> None:
        self.local.close()


def run_trial_request(request: TrialRequest) -> TrialAnswer:
    """Run one trial of a bundle (``python -m deepopt_core.cli trial``). Writes ``<workdir>/trial.json`` (the
    answer) and, when it was measured, ``<workdir>/trial.onnx``; returns the answer."""
    workdir = request.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    runner = OnnxTrialRunner.from_bundle(request.bundle, workdir / "scratch")
    outcome: Measurement | TrialFailed
    try:
        outcome = runner.run(request.number, request.recipe)
        shutil.copyfile(runner.paths[request.number], workdir / "trial.onnx")
        outcome.details["worker"] = request.worker
    except TrialFailed as exc:
        outcome = exc
    finally:
        runner.close()
    outcome.seconds = time.perf_counter() - began
    answer = answer_of(outcome)
    write_message(workdir / "trial.json", answer)
    log.info("trial %d: %s", request.number, answer.status)
    return answer
