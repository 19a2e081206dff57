"""The `auto` pass: the search's order, rejections, budget and choice on a scripted runner (no models), the config's
submit-time checks, and real searches on the digits MLP through `optimize` (without and with train data: the
training recipes, structured pruning and distillation) whose chosen model is checked again on held-out rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from deepopt_core.passes.auto.config import AutoConfig
from deepopt_core.passes.auto.search import Measurement, TrialFailed, TrialNotStarted, search
from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.pipeline import optimize
from deepopt_core.planning import PlanError, plan

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(120)]
BASE = Measurement(quality=0.98, latency_ms=10.0, size_bytes=1000)


class ScriptedRunner:
    """Answers each recipe from a table (`type:mode-or-sparsity`, joined by ` + `), records what ran, and moves
    a fake clock by `trial_seconds` per trial."""

    def __init__(self, table: dict[str, tuple[float, float, int]], clock: list[float] | None = None,
                 trial_seconds: float = 0.0):
        self.table = table
        self.ran: list[str] = []
        self.latency: dict[int, float] = {}
        self.clock = clock
        self.trial_seconds = trial_seconds

    def baseline(self) -> Measurement:
        return BASE

    def run(self, number: int, recipe: list[dict[str, Any]]) -> Measurement:
        key = " + ".join(_key(s) for s in recipe)
        self.ran.append(key)
        if self.clock is not None:
            self.clock[0] += self.trial_seconds
        if key not in self.table:
            raise TrialFailed(f"no answer for {key}")
        quality, latency, size = self.table[key]
        self.latency[number] = latency
        return Measurement(quality, latency, size)

    def retime(self, numbers: list[int]) -> dict[int, float]:
        return {0: BASE.latency_ms, **{n: self.latency[n] for n in numbers}}


class ScriptedWaveRunner(ScriptedRunner):
    """A scripted runner that takes `width` recipes at once (as workers would) and records each wave; numbers in
    `not_started` are answered as never started within the minutes."""

    def __init__(self, table: dict[str, tuple[float, float, int]], width: int, not_started: set[int] | None = None):
        super().__init__(table)
        self.width = width
        self.waves: list[list[str]] = []
        self.not_started = not_started or set()

    def parallelism(self) -> int:
        return self.width

    def run_many(self, batch: list[tuple[int, list[dict[str, Any]]]],
                 deadline_s: float) -> dict[int, Measurement | TrialFailed]:
        assert len(batch) <= self.width and deadline_s > 0
        before = len(self.ran)
        answers: dict[int, Measurement | TrialFailed] = {}
        for number, recipe in batch:
            if number in self.not_started:
                answers[number] = TrialNotStarted("the minutes ran out before a worker started it")
                continue
            try:
                answers[number] = self.run(number, recipe)
            except TrialFailed as exc:
                answers[number] = exc
        self.waves.append(self.ran[before:])
        return answers


def _key(step: dict[str, Any]) -> str:
    if step["type"] == "distill":
        return f"distill:{step['student']['width_ratio']}"
    if step.get("method") == "structured":
        return f"prune:structured {step['sparsity']}"
    return f"{step['type']}:{step.get('mode') or step.get('sparsity')}"


def _answers(**overrides: tuple[float, float, int]) -> dict[str, tuple[float, float, int]]:
    table = {
        "quantize:static": (0.975, 6.0, 270), "quantize:dynamic": (0.978, 7.0, 260), "quantize:fp16": (0.98, 10.0, 500),
        "quantize:weight_only": (0.979, 10.5, 250),
        **{f"prune:{s}": (0.98 - s * s * 0.05, 9.9, 1000) for s in (0.3, 0.5, 0.7, 0.9)},
    }  # fmt: skip
    table.update(overrides)
    return table


def test_search_orders_rejects_and_chooses_the_fastest_within_the_bound() -> None:
    runner = ScriptedRunner(_answers())
    found = search(AutoConfig(budget={"trials": 50}), runner, metric="accuracy", has_matmul=False)
    # Quantization modes by their prior (dynamic, the cheapest, first), then the pruning ladder from the middle.
    assert runner.ran[:4] == ["quantize:dynamic", "quantize:static", "quantize:fp16", "prune:0.5"]
    # 0.5 gave no latency gain: the other sparsities and every prune + quantize combination are rejected unrun.
    skipped = [t for t in found.trials if t.status == "skipped"]
    assert {t.label for t in skipped} >= {"prune(magnitude 0.3)", "prune(magnitude 0.7)", "prune(magnitude 0.9)"}
    assert all(t.reason for t in skipped) and len(runner.ran) == 4
    chosen = next(t for t in found.trials if t.number == found.chosen)
    assert chosen.label == "quantize(static int8)" and found.met_bound and found.stopped == "exhausted"
    decisions = found.decisions(AutoConfig())
    assert decisions["trials_run"] == 4 and decisions["chosen_label"] == "quantize(static int8)"
    assert {t["trial"] for t in decisions["trials"] if t["pareto"]} == set(found.pareto)


def test_lossy_sparsity_rejects_higher_ones_and_combinations_are_estimated_first() -> None:
    # Pruning that pays: 0.5 is faster and within the bound, 0.7 loses too much, so 0.9 is never run.
    answers = _answers(**{"prune:0.5": (0.978, 5.0, 1000), "prune:0.7": (0.95, 4.0, 1000),
                          "prune:0.3": (0.98, 7.0, 1000)})
    runner = ScriptedRunner(answers | {"prune:0.5 + quantize:static": (0.9745, 3.0, 270)})
    found = search(AutoConfig(budget={"trials": 50}), runner, metric="accuracy", has_matmul=False)
    assert "prune:0.9" not in runner.ran and "prune:0.7" in runner.ran
    reasons = {t.label: t.reason for t in found.trials if t.status == "skipped"}
    assert "a higher sparsity loses more" in reasons["prune(magnitude 0.9)"]
    # prune 0.5 (drop 0.002) + static (drop 0.005) is estimated within the bound and faster: it runs; + fp16 is
    # estimated no faster than the best measured, so it does not.
    assert "prune:0.5 + quantize:static" in runner.ran
    assert "cannot beat the best" in reasons["prune(magnitude 0.5) + quantize(fp16)"]


def test_a_wave_runner_gets_each_stage_at_once_and_rejections_apply_between_waves() -> None:
    answers = _answers(**{"prune:0.5": (0.978, 5.0, 1000), "prune:0.7": (0.95, 4.0, 1000),
                          "prune:0.3": (0.98, 7.0, 1000)})
    runner = ScriptedWaveRunner(answers | {"prune:0.5 + quantize:static": (0.9745, 3.0, 270)}, width=3)
    found = search(AutoConfig(budget={"trials": 50}), runner, metric="accuracy", has_matmul=False)
    # The single-pass recipes with the middle sparsity, then the rest of the ladder at once (0.9 runs although 0.7
    # turns out too lossy: its wave-mate's result came too late to reject it), then the combinations the
    # measurements admit, estimated from their parts as in the sequential search.
    assert runner.waves[:4] == [
        ["quantize:dynamic", "quantize:static", "quantize:fp16"], ["prune:0.5"],
        ["prune:0.7", "prune:0.9", "prune:0.3"],
        ["prune:0.5 + quantize:dynamic", "prune:0.5 + quantize:static", "prune:0.3 + quantize:static"],
    ]
    reasons = {t.label: t.reason for t in found.trials if t.status == "skipped"}
    assert "cannot beat the best" in reasons["prune(magnitude 0.5) + quantize(fp16)"]
    numbers = [t.number for t in found.trials if t.status != "skipped"]
    assert numbers == list(range(1, len(runner.ran) + 1))
    chosen = next(t for t in found.trials if t.number == found.chosen)
    assert chosen.label == "prune(magnitude 0.5) + quantize(static int8)"
    # The trials budget caps a wave; a recipe no worker started within the minutes is not a trial and stops it.
    capped = ScriptedWaveRunner(_answers(), width=3)
    assert search(AutoConfig(budget={"trials": 2}), capped, metric="accuracy").stopped == "trials"
    assert capped.waves == [["quantize:dynamic", "quantize:static"]]
    late = ScriptedWaveRunner(_answers(), width=3, not_started={3})
    found = search(AutoConfig(budget={"trials": 50}), late, metric="accuracy", has_matmul=False)
    assert found.stopped == "minutes" and late.waves == [["quantize:dynamic", "quantize:static"]]
    (unstarted,) = [t for t in found.trials if t.status == "skipped"]
    assert unstarted.label == "quantize(fp16)" and "minutes" in (unstarted.reason or "")
    assert found.decisions(AutoConfig())["trials_run"] == 2


def test_budget_in_trials_and_minutes_is_respected() -> None:
    runner = ScriptedRunner(_answers())
    found = search(AutoConfig(budget={"trials": 2}), runner, metric="accuracy")
    assert len(runner.ran) == 2 and found.stopped == "trials"
    clock = [0.0]
    slow = ScriptedRunner(_answers(), clock=clock, trial_seconds=40.0)
    found = search(AutoConfig(budget={"trials": 50, "minutes": 1.0}), slow, metric="accuracy",
                   clock=lambda: clock[0])
    # Trials start only while time is left: 0 s and 40 s start, the third would start at 80 s > 60 s.
    assert len(slow.ran) == 2 and found.stopped == "minutes" and found.chosen is not None


def test_nothing_within_the_bound_keeps_the_best_trial_and_says_so() -> None:
    lossy = {k: (0.90, v[1], v[2]) for k, v in _answers().items()}
    found = search(AutoConfig(budget={"trials": 50}), ScriptedRunner(lossy), metric="accuracy")
    assert found.met_bound is False and found.chosen is not None and found.chosen in found.pareto
    assert any("no recipe met the bound" in n for n in found.notes)


def test_training_recipes_run_after_the_cheap_ones_only_with_train_data() -> None:
    # Structured pruning pays (0.5 within the bound and faster), distillation loses too much.
    answers = _answers(**{"prune:structured 0.5": (0.976, 4.0, 400), "prune:structured 0.25": (0.979, 6.0, 700),
                          "distill:0.5": (0.95, 3.5, 380),
                          "prune:structured 0.5 + quantize:static": (0.972, 2.5, 120)})
    runner = ScriptedRunner(answers)
    config = AutoConfig(budget={"trials": 50}, allowed=["quantize", "prune", "distill"])
    found = search(config, runner, metric="accuracy", has_matmul=False, has_train=True)
    # The cheap singles and the magnitude ladder first, then the training recipes by their priors; 0.25 is
    # rejected by 0.5 (within the bound and faster), and only the best quantization mode is combined with 0.5.
    assert runner.ran == ["quantize:dynamic", "quantize:static", "quantize:fp16", "prune:0.5",
                          "prune:structured 0.5", "distill:0.5", "prune:structured 0.5 + quantize:static"]
    reasons = {t.label: t.reason for t in found.trials if t.status == "skipped"}
    assert "removing fewer units" in reasons["prune(structured 0.25)"]
    chosen = next(t for t in found.trials if t.number == found.chosen)
    assert chosen.label == "prune(structured 0.5) + quantize(static int8)" and found.met_bound
    assert chosen.recipe[0]["fine_tune"] and chosen.recipe[1]["mode"] == "static"
    # Without train data they are skipped with a note (and nothing else changes).
    plain = ScriptedRunner(answers)
    found = search(config, plain, metric="accuracy", has_matmul=False)
    assert not any("structured" in key or "distill" in key for key in plain.ran)
    assert any("structured pruning and distillation skipped" in note for note in found.notes)


def test_distill_alone_needs_train_data_at_submit() -> None:
    spec = AutoConfig(allowed=["distill"])
    labelled = {"has_labels": True}
    assert [loc for loc, _ in check_pass(spec, SubmitContext(model={}, eval=labelled))] == [("allowed",)]
    assert check_pass(spec, SubmitContext(model={}, eval=labelled, train=labelled)) == []
    assert check_pass(AutoConfig(allowed=["quantize", "distill"]), SubmitContext(model={}, eval=labelled)) == []


def test_submit_checks_need_eval_data_and_labels() -> None:
    spec = AutoConfig()
    assert [loc for loc, _ in check_pass(spec, SubmitContext(model={}))] == [("max_accuracy_drop",)]
    unlabelled = SubmitContext(model={}, eval={"has_labels": False})
    assert check_pass(spec, unlabelled) == []
    assert [loc for loc, _ in check_pass(AutoConfig(metric="accuracy"), unlabelled)] == [("metric",)]
    with pytest.raises(PlanError, match="auto"):
        plan("torchscript", [spec], ["torchscript"])
    assert [t.representation for t in plan("torchscript", [spec], ["onnx"])] == ["onnx"]


def test_auto_on_digits_meets_the_bound_on_held_out_rows(digits: dict[str, Path], tmp_path: Path) -> None:
    rows = np.load(digits["eval"])
    x, y = rows["input"], rows["labels"]
    half = len(x) // 2
    search_set = tmp_path / "search.npz"
    np.savez(search_set, input=x[:half], labels=y[:half])
    spec = {"type": "auto", "objective": "size", "max_accuracy_drop": 0.01, "budget": {"trials": 6, "minutes": 2}}
    result = optimize(digits["onnx"], [spec], {"eval": search_set}, workdir=tmp_path / "out",
                      benchmark={"batch_sizes": [8], "runs": 5, "warmup": 1, "threads": 1})
    (decision,) = [d for d in result.decisions if d["type"] == "auto"]
    measured = [t for t in decision["trials"] if t["status"] == "measured"]
    assert 1 <= len(measured) <= 6 and decision["trials_run"] == len(measured)
    assert decision["met_bound"] is True and decision["chosen"] is not None
    keys = {"recipe", "label", "quality", "drop", "latency_ms", "size_bytes", "seconds"}
    assert all(keys <= set(t) for t in measured)

    (model,) = [a for a in result.artifacts if a.kind == "model"]
    plots = {a.filename for a in result.artifacts if a.kind == "plot"}
    assert any(name.endswith("-auto-trials.svg") for name in plots) and any(n.endswith("-tradeoff.svg") for n in plots)
    bench = next(b for b in result.benchmarks if b.artifact_index is not None)
    assert bench.metrics["met_bound"] is True and bench.metrics["auto"]["chosen"] == decision["chosen"]
    assert bench.size_bytes < 0.5 * result.benchmarks[0].size_bytes

    def accuracy(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float((session.run(None, {"input": x[half:]})[0].argmax(1) == y[half:]).mean())

    assert accuracy(Path(model.path)) >= accuracy(digits["onnx"]) - 0.01


def test_auto_with_train_data_searches_structured_pruning_and_distillation(digits: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    from examples.digits import digits_split

    x_train, y_train, _, _ = digits_split(0)
    train = tmp_path / "train.npz"
    np.savez(train, input=x_train[:640], labels=y_train[:640])
    rows = np.load(digits["eval"])
    x, y = rows["input"], rows["labels"]
    half = len(x) // 2
    search_set = tmp_path / "search.npz"
    np.savez(search_set, input=x[:half], labels=y[:half])
    spec = {"type": "auto", "objective": "latency", "max_accuracy_drop": 0.01, "allowed": ["prune", "distill"],
            "budget": {"trials": 5, "minutes": 3}}
    result = optimize(digits["onnx"], [spec], {"eval": search_set, "train": train}, workdir=tmp_path / "out",
                      benchmark={"batch_sizes": [8], "runs": 5, "warmup": 1, "threads": 1})
    (decision,) = [d for d in result.decisions if d["type"] == "auto"]
    trials = {t["label"]: t for t in decision["trials"]}
    # The training recipes ran as trials on the ONNX model (converted to torch, trained, exported back).
    structured, distilled = trials["prune(structured 0.5)"], trials["distill(width 0.5)"]
    assert structured["status"] == distilled["status"] == "measured", (structured, distilled)
    (pruned,) = structured["passes"]
    assert pruned["method"] == "structured" and pruned["params_after"] < 0.5 * pruned["params_before"]
    assert distilled["passes"][0]["student_parameters"] < 0.5 * distilled["passes"][0]["teacher_parameters"]
    assert structured["size_bytes"] < 0.6 * decision["baseline"]["size_bytes"]
    assert not any("skipped" in note for note in decision["notes"])
    if decision["chosen"] is not None:
        assert decision["met_bound"] is True
        assert trials[decision["chosen_label"]]["meets_bound"] is True

    (model,) = [a for a in result.artifacts if a.kind == "model"]

    def accuracy(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float((session.run(None, {"input": x[half:]})[0].argmax(1) == y[half:]).mean())

    assert accuracy(Path(model.path)) >= accuracy(digits["onnx"]) - 0.01


def test_training_trials_are_local_only_on_the_dispatch_folder(tmp_path: Path) -> None:
    from typing import cast

    from deepopt_core.passes.auto.remote import DispatchTrialRunner
    from deepopt_core.passes.auto.trials import OnnxTrialRunner, needs_training

    structured = [{"type": "prune", "method": "structured", "sparsity": 0.5, "fine_tune": {"epochs": 3}}]
    distill = [{"type": "distill", "student": {"width_ratio": 0.5}}]
    assert needs_training(structured) and needs_training(distill)
    assert not needs_training([{"type": "prune", "method": "magnitude", "sparsity": 0.5}, {"type": "quantize"}])
    local = ScriptedRunner({"prune:structured 0.5": (0.98, 5.0, 400), "distill:0.5": (0.97, 4.0, 380)})
    runner = DispatchTrialRunner(cast(OnnxTrialRunner, local), tmp_path)
    answers = runner.run_many([(1, structured), (2, distill)], deadline_s=60.0)
    # No wave (a bundle has no train data): the job's own process ran both, and says so.
    assert local.ran == ["prune:structured 0.5", "distill:0.5"] and list((tmp_path / "waves").iterdir()) == []
    assert all(isinstance(a, Measurement) and a.details["local_only"] for a in answers.values())
