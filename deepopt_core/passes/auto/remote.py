"""Trials of the `auto` pass on several workers, as seen from the core: a folder shared with the job's worker.

Why a folder: the search runs in the job's child process, which holds the model and the data but has no database
and no broker (the core never imports them); only the worker process that started it can enqueue Celery tasks,
claim rows and reach the storage. So the child writes what it wants run, the worker answers with what came back,
and neither needs the other's libraries. Every file is written under a temporary name and renamed, so a reader
sees it whole or not at all. The layout of the dispatch folder (``trial_dispatch`` in the run request):

``capacity``
    the worker: how many workers now serve the job's queue (the width of a wave, at least 1).
``bundle-<search>/``
    the child, once per search: what a trial needs on another machine (:meth:`OnnxTrialRunner.write_bundle`).
``waves/<search>-<wave>.json``
    the child: ``{"search", "bundle", "deadline_s", "trials": [{"key", "number", "recipe"}]}``; it then waits
    until every trial of the wave has an answer.
``local/<key>.json``
    the worker claimed this trial for itself: ``{"worker"}``. The child runs it here, in this process, exactly
    as with no server (no copy of the model, no new process, no upload), and writes ``done/<key>.json``.
``results/<key>.json`` (and ``results/<key>.onnx``)
    the worker: the answer for a trial another worker ran (``succeeded`` with the measurement and its model,
    ``failed`` with the error), or one no worker started before the minutes ran out (``skipped``).

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
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from deepopt_core.passes.auto.search import Measurement, TrialFailed, TrialNotStarted
from deepopt_core.passes.auto.trials import OnnxTrialRunner, needs_training
from deepopt_core.protocol import TrialRequest

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


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (a temporary name in the same folder, then a rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload))
    os.replace(temporary, path)


def measurement_json(measurement: Measurement) -> dict[str, Any]:
    return {"quality": measurement.quality, "latency_ms": measurement.latency_ms,
            "size_bytes": measurement.size_bytes, "details": measurement.details}


class DispatchTrialRunner:
    """A :class:`~deepopt_core.passes.auto.search.WaveRunner` over the dispatch folder; the baseline, the
    retiming and the chosen model stay with the in-process runner `local`."""

    def __init__(self, local: OnnxTrialRunner, folder: Path):
        self.local = local
        self.folder = folder
        self.search = next(_SEARCHES)
        self.waves = 0
        self.bundle = folder / f"bundle-{self.search}"
        for sub in ("waves", "local", "done", "results"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def baseline(self) -> Measurement:
        measured = self.local.baseline()
        self.local.write_bundle(self.bundle)
        return measured

    def parallelism(self) -> int:
        try:
            return max(1, int((self.folder / "capacity").read_text().strip() or 1))
        except (OSError, ValueError):
            return 1

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
            write_json(self.folder / "waves" / f"{self.search}-{self.waves}.json", {
                "search": self.search, "bundle": self.bundle.name,
                "deadline_s": deadline_s if deadline_s != float("inf") else None,
                "trials": [{"key": keys[number], "number": number, "recipe": recipe} for number, recipe in batch],
            })  # fmt: skip
        answers: dict[int, Measurement | TrialFailed] = {}
        for number, recipe in local_only:  # while the others are out
            answers[number] = self._run_local(number, recipe, None)
            answers[number].details["local_only"] = True
        while len(answers) < len(batch) + len(local_only):
            moved = False
            for number, key in keys.items():
                if number in answers:
                    continue
                result = self.folder / "results" / f"{key}.json"
                assigned = self.folder / "local" / f"{key}.json"
                if result.exists():
                    answers[number] = self._answer(number, key, json.loads(result.read_text()))
                elif assigned.exists():
                    worker = json.loads(assigned.read_text()).get("worker")
                    answers[number] = self._run_here(number, key, recipes[number], worker)
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
        payload: dict[str, Any] = {"seconds": outcome.seconds}
        if isinstance(outcome, TrialFailed):
            payload.update(status="failed", error=str(outcome)[:2000])
        else:
            payload.update(status="succeeded", measurement=measurement_json(outcome))
        write_json(self.folder / "done" / f"{key}.json", payload)
        return outcome

    def _answer(self, number: int, key: str, payload: dict[str, Any]) -> Measurement | TrialFailed:
        status, seconds = payload.get("status"), payload.get("seconds")
        details = {"worker": payload.get("worker")}
        if status == "succeeded":
            model = self.folder / "results" / f"{key}.onnx"
            try:
                self.local.adopt(number, model)
            except Exception as exc:  # a model that does not load here cannot be chosen
                return TrialFailed(f"the trial's model from {payload.get('worker')} does not load: {exc}"[:300],
                                   seconds=seconds, details=details)
            measured = payload["measurement"]
            return Measurement(float(measured["quality"]), float(measured["latency_ms"]), int(measured["size_bytes"]),
                               {**measured.get("details", {}), **details}, seconds=seconds)
        if status == "skipped":
            return TrialNotStarted(str(payload.get("error") or "the minutes budget ran out before it started"))
        return TrialFailed(str(payload.get("error") or f"the trial ended {status}"), seconds=seconds,
                           details=details)

    def retime(self, numbers: list[int]) -> dict[int, float]:
        return self.local.retime(numbers)

    def model_of(self, number: int) -> Any:
        return self.local.model_of(number)

    def close(self) -> None:
        self.local.close()


def run_trial_request(request: TrialRequest) -> dict[str, Any]:
    """Run one trial of a bundle (``python -m deepopt_core.cli trial``). Writes ``<workdir>/trial.json`` (the
    answer) and, when it was measured, ``<workdir>/trial.onnx``; returns the answer."""
    workdir = request.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    runner = OnnxTrialRunner.from_bundle(request.bundle, workdir / "scratch")
    number = request.number
    payload: dict[str, Any]
    try:
        measured = runner.run(number, request.recipe)
        shutil.copyfile(runner.paths[number], workdir / "trial.onnx")
        measured.details["worker"] = request.worker
        payload = {"status": "succeeded", "measurement": measurement_json(measured)}
    except TrialFailed as exc:
        payload = {"status": "failed", "error": str(exc)[:2000]}
    finally:
        runner.close()
    payload["seconds"] = time.perf_counter() - began
    write_json(workdir / "trial.json", payload)
    log.info("trial %d: %s", number, payload["status"])
    return payload
