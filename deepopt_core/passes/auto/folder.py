"""The dispatch folder of the `auto` pass: how a job's child and its worker hand each other trials.

Why a folder: the search runs in the job's child process, which holds the model and the data but has no database
and no broker (the core never imports them); only the worker process that started it can enqueue Celery tasks,
claim rows and reach the storage. So the child writes what it wants run, the worker answers with what came back,
and neither needs the other's libraries. Both sides go through :class:`TrialFolder`, the one definition of the
layout; every file is a typed message written under a temporary name and renamed (:func:`write_message`), so a
reader sees it whole or not at all, and read back validated. The folder is ``trial_dispatch`` of the run request:

``capacity``
    the worker: how many workers now serve the job's queue (the width of a wave, at least 1).
``bundle-<search>/``
    the child, once per search: what a trial needs on another machine (:meth:`OnnxTrialRunner.write_bundle`).
``waves/<search>-<wave>.json``
    the child: a :class:`Wave` (``{"search", "bundle", "deadline_s", "trials": [{"key", "number", "recipe"}]}``);
    it then waits until every trial of the wave has an answer.
``local/<key>.json``
    the worker claimed this trial for itself: an :class:`Assignment` (``{"worker"}``). The child runs it in its
    own process, exactly as with no server (no copy of the model, no new process, no upload), and writes
    ``done/<key>.json``, a :class:`TrialAnswer`.
``results/<key>.json`` (and ``results/<key>.onnx``)
    the worker: the :class:`TrialAnswer` for a trial another worker ran (``succeeded`` with the measurement and
    its model, ``failed`` with the error), or one no worker started before the minutes ran out (``skipped``).

A trial that runs on another worker (``python -m deepopt_core.cli trial``) answers in its own folder with the
same :class:`TrialAnswer` (``trial.json``, and its model ``trial.onnx``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deepopt_core.protocol import read_message, write_atomic, write_message

SUBFOLDERS = ("waves", "local", "done", "results")


class _Message(BaseModel):
    # A latency or quality that is not finite stays what it was on the way through.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class TrialMeasurement(_Message):
    """What a trial's model measured (the trial row's `result`)."""

    quality: float
    latency_ms: float
    size_bytes: int
    details: dict[str, Any] = Field(default_factory=dict)


class TrialAnswer(_Message):
    """How a trial ended: its measurement when it succeeded, its error when not."""

    status: Literal["succeeded", "failed", "cancelled", "skipped"]
    seconds: float | None = None
    measurement: TrialMeasurement | None = None
    error: str | None = None
    worker: str | None = Field(None, description="Where it ran (`host:pid`), when another worker ran it.")


class WaveTrial(_Message):
    key: str = Field(max_length=128)
    number: int
    recipe: list[dict[str, Any]]


class Wave(_Message):
    """Trials the child wants run at once, on whichever workers claim them."""

    search: int
    bundle: str = Field(description="The name of the search's bundle folder in the dispatch folder.")
    deadline_s: float | None = Field(None, description="Seconds from now after which an unstarted trial is skipped.")
    trials: list[WaveTrial]


class Assignment(_Message):
    """The job's own worker claimed the trial: the child runs it itself."""

    worker: str | None = None


class TrialFolder:
    """The dispatch folder at `root` (its subfolders are created)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in SUBFOLDERS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- the worker writes, the child reads ------------------------------------------------------------------

    def write_capacity(self, workers: int) -> None:
        write_atomic(self.root / "capacity", str(max(1, workers)))

    def capacity(self) -> int:
        """The width of a wave: 1 until the worker said otherwise."""
        try:
            return max(1, int((self.root / "capacity").read_text().strip() or 1))
        except (OSError, ValueError):
            return 1

    def assign(self, key: str, worker: str | None) -> None:
        write_message(self.root / "local" / f"{key}.json", Assignment(worker=worker))

    def assignment(self, key: str) -> Assignment | None:
        path = self.root / "local" / f"{key}.json"
        return read_message(path, Assignment) if path.exists() else None

    def result_model(self, key: str) -> Path:
        """Where the model of a trial another worker ran goes (before its answer is written)."""
        return self.root / "results" / f"{key}.onnx"

    def write_result(self, key: str, answer: TrialAnswer) -> None:
        write_message(self.root / "results" / f"{key}.json", answer)

    def result(self, key: str) -> TrialAnswer | None:
        path = self.root / "results" / f"{key}.json"
        return read_message(path, TrialAnswer) if path.exists() else None

    # -- the child writes, the worker reads ------------------------------------------------------------------

    def bundle(self, search: int) -> Path:
        return self.root / f"bundle-{search}"

    def bundle_files(self, name: str) -> list[Path]:
        """The files of the bundle folder a wave names (never anything outside this folder)."""
        folder = self.root / Path(name).name
        return [path for path in sorted(folder.iterdir()) if path.is_file()]

    def write_wave(self, number: int, wave: Wave) -> None:
        write_message(self.root / "waves" / f"{wave.search}-{number}.json", wave)

    def waves(self, seen: set[str]) -> Iterator[tuple[str, Wave]]:
        """``(name, wave)`` of each wave whose name is not in `seen`, in order."""
        for path in sorted((self.root / "waves").glob("*.json")):
            if path.name not in seen:
                yield path.name, read_message(path, Wave)

    def write_done(self, key: str, answer: TrialAnswer) -> None:
        write_message(self.root / "done" / f"{key}.json", answer)

    def done(self, key: str) -> TrialAnswer | None:
        path = self.root / "done" / f"{key}.json"
        return read_message(path, TrialAnswer) if path.exists() else None
