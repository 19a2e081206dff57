"""The search of the `auto` pass, apart from how a trial runs: candidates, order, early rejection, budget, choice.

A :class:`TrialRunner` measures the model the pass received (:meth:`TrialRunner.baseline`) and one recipe at a
time (:meth:`TrialRunner.run`); :func:`search` decides what to run next and what to skip. The in-process runner
is :class:`deepopt_core.passes.auto.trials.OnnxTrialRunner`. A :class:`WaveRunner` measures several recipes at
once (on several workers: :mod:`deepopt_core.passes.auto.remote`), so the search goes in waves: the candidates of a
stage that no measurement so far rejects go out together, at most :meth:`WaveRunner.parallelism` of them, and
the rejections are evaluated again before the next wave. A runner of width one (any plain :class:`TrialRunner`)
therefore sees exactly the sequential search: each rejection rests on every trial before it. A wider runner
trades a little of that (a candidate may run that the result of its wave-mate would have rejected) for time.

The order and the rejections:

1. single-pass recipes, the most promising for the objective first (a prior from the quantization and pruning
   benchmarks; priors only order, they never reject), with the middle pruning sparsity;
2. a pruning sparsity ladder starts in the middle: a sparsity that loses more than the bound rejects every higher
   one (the drop grows with sparsity), and one that gives no gain on the objective rejects the higher ones too
   (dense kernels do not get faster or smaller from zeros);
3. training recipes, only when the job has a train dataset (else skipped with a note): structured pruning (whole
   units removed, then `fine_tune` recovery on the train data) at the higher sparsity first, and distillation into
   a student of half the width. They cost minutes where the others cost seconds, so they run after the cheap
   singles (ordered among themselves by the same priors). A structured sparsity is rejected by a higher one that
   met the bound with a gain (removing fewer units cannot be faster or smaller), by a lower one that lost too much,
   or by a higher one that gave no gain;
4. combinations (prune, then quantize) of singles that met the bound, estimated before running: the drop as the
   sum of the parts' drops, the cost as the product of the parts' ratios; a combination is rejected when the
   estimate breaks the bound or cannot beat the best model measured so far by a margin. Magnitude sparsities are
   combined with every quantization mode that met the bound, training recipes with the best one only (each of
   their combinations trains again).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from deepopt_core.errors import DeepOptError
from deepopt_core.evaluate.plots import pareto_front
from deepopt_core.passes.auto.config import AutoConfig

log = logging.getLogger("deepopt.passes.auto")

PRUNE_SPARSITIES = (0.3, 0.5, 0.7, 0.9)
# Training recipes (need the job's train dataset): units removed by structured pruning, recovered by fine-tuning;
# a student of DISTILL_WIDTH of the model's width, distilled from it. Settings that recover the digits models.
STRUCTURED_SPARSITIES = (0.5, 0.25)
STRUCTURED_RECOVERY: dict[str, Any] = {"epochs": 3, "lr": 3e-3}
DISTILL_WIDTH = 0.5
DISTILL_TRAINING: dict[str, Any] = {"epochs": 10, "lr": 3e-3}
TRAINING_KEYS = ("prune/structured", "distill/width")
# A measured ratio (candidate / original) at or above this is no gain (latency on a shared CPU moves a few %).
NO_GAIN_RATIO = 0.93
# A combination must be estimated this much better than the best measured model to be worth a trial.
COMBINE_MARGIN = 0.97
CONFIRM_TOP = 3
# The chosen recipe must cost at most this share of the original's latency (timed interleaved) to be returned.
LATENCY_WIN = 0.97

# Expected cost ratio against fp32 per objective, from benchmarks/results/{quantization,pruning}.md. They order
# the trials (the most promising first); only measurements reject.
PRIORS: dict[str, dict[str, float]] = {
    "latency": {"quantize/static": 0.65, "quantize/dynamic": 0.6, "quantize/fp16": 1.0,
                "quantize/weight_only/int8": 1.05, "quantize/weight_only/int4": 1.05, "prune/magnitude": 1.0,
                "prune/structured": 0.5, "distill/width": 0.55},
    "size": {"quantize/weight_only/int4": 0.2, "quantize/dynamic": 0.26, "quantize/static": 0.27,
             "quantize/weight_only/int8": 0.3, "quantize/fp16": 0.5, "prune/magnitude": 1.0,
             "prune/structured": 0.5, "distill/width": 0.5},
}  # fmt: skip


Verdict = tuple[str | None, dict[str, float] | None]  # (why a candidate is rejected, or None; its estimate)


@dataclass
class Measurement:
    """What one model measured: quality (higher is better), latency, size; `details` is free-form."""

    quality: float
    latency_ms: float
    size_bytes: int
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None  # how long the trial took where it ran (None: the search times the call)


class TrialFailed(Exception):
    """A recipe could not be applied or measured (the pass refused the model, say); the search carries on."""

    def __init__(self, message: str, *, seconds: float | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.seconds = seconds
        self.details = details or {}


class TrialNotStarted(TrialFailed):
    """A recipe of a wave that no worker started before the minutes budget ran out: not counted as a trial."""


class TrialRunner(Protocol):
    """Runs recipes (lists of pass spec dicts) on the model the search started from."""

    def baseline(self) -> Measurement: ...

    def run(self, number: int, recipe: list[dict[str, Any]]) -> Measurement: ...

    def retime(self, numbers: list[int]) -> dict[int, float]:
        """Latency (ms) of the baseline (key 0) and of trials `numbers`, timed again interleaved, round-robin."""
        ...


class WaveRunner(TrialRunner, Protocol):
    """A runner that measures several recipes at once; :func:`search` uses it when a runner has `run_many`."""

    def parallelism(self) -> int:
        """How many recipes are worth sending at once now (the workers that can take one)."""
        ...

    def run_many(self, batch: list[tuple[int, list[dict[str, Any]]]],
                 deadline_s: float) -> dict[int, Measurement | TrialFailed]:
        """Measure every (number, recipe) of `batch`; a recipe not started within `deadline_s` seconds is answered
        with :class:`TrialNotStarted`, one that failed with :class:`TrialFailed`."""
        ...


@dataclass
class Candidate:
    key: str  # the prior's key: `quantize/dynamic`, `prune/magnitude`
    label: str
    recipe: list[dict[str, Any]]
    parts: tuple[str, ...] = ()  # labels of the singles a combination is made of
    sparsity: float | None = None


@dataclass
class Trial:
    """One recipe: measured, failed, or skipped with the reason (skipped ones are not counted as trials)."""

    number: int
    label: str
    recipe: list[dict[str, Any]]
    status: str  # measured | failed | skipped
    reason: str | None = None
    quality: float | None = None
    drop: float | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    seconds: float | None = None
    meets_bound: bool | None = None
    estimate: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, baseline: Measurement) -> dict[str, Any]:
        out: dict[str, Any] = {"trial": self.number, "label": self.label, "recipe": self.recipe,
                               "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.estimate:
            out["estimate"] = {k: round(v, 4) for k, v in self.estimate.items()}
        if self.status == "measured":
            out.update(
                quality=round(self.quality or 0.0, 6), drop=round(self.drop or 0.0, 6),
                latency_ms=round(self.latency_ms or 0.0, 4), size_bytes=self.size_bytes,
                speedup=round(baseline.latency_ms / self.latency_ms, 4) if self.latency_ms else None,
                size_ratio=round((self.size_bytes or 0) / baseline.size_bytes, 4) if baseline.size_bytes else None,
                meets_bound=self.meets_bound, **self.details,
            )  # fmt: skip
        elif self.details.get("worker"):
            out["worker"] = self.details["worker"]
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class SearchResult:
    baseline: Measurement
    trials: list[Trial]
    chosen: int | None  # trial number; None: the original is returned
    met_bound: bool
    stopped: str  # exhausted | trials | minutes
    seconds: float
    metric: str
    pareto: list[int]
    notes: list[str] = field(default_factory=list)

    def decisions(self, config: AutoConfig) -> dict[str, Any]:
        measured = [t for t in self.trials if t.status == "measured"]
        return {
            "objective": config.objective, "metric": self.metric, "max_accuracy_drop": config.max_accuracy_drop,
            "budget": config.budget.model_dump(), "batch_size": config.batch_size,
            "baseline": {"quality": round(self.baseline.quality, 6), "latency_ms": round(self.baseline.latency_ms, 4),
                         "size_bytes": self.baseline.size_bytes},
            "trials_run": len(measured), "trials_skipped": sum(t.status == "skipped" for t in self.trials),
            "stopped": self.stopped, "seconds": round(self.seconds, 2), "met_bound": self.met_bound,
            "chosen": self.chosen,
            "chosen_label": next((t.label for t in self.trials if t.number == self.chosen), "original"),
            "pareto_front": self.pareto,
            "trials": [{**t.as_dict(self.baseline), "pareto": t.number in self.pareto} for t in self.trials],
            "notes": self.notes,
        }  # fmt: skip


def quantize_candidates(objective: str, has_matmul: bool) -> list[Candidate]:
    """The quantization modes worth a trial for `objective` (weight-only needs MatMul/Gemm layers)."""
    out = [
        Candidate("quantize/dynamic", "quantize(dynamic int8)", [{"type": "quantize", "mode": "dynamic"}]),
        Candidate("quantize/static", "quantize(static int8)",
                  [{"type": "quantize", "mode": "static", "calibration": "percentile", "per_channel": True}]),
        Candidate("quantize/fp16", "quantize(fp16)", [{"type": "quantize", "mode": "fp16"}]),
    ]
    if has_matmul:
        out += [
            Candidate("quantize/weight_only/int8", "quantize(weight_only int8)",
                      [{"type": "quantize", "mode": "weight_only", "weight_dtype": "int8"}]),
            Candidate("quantize/weight_only/int4", "quantize(weight_only int4)",
                      [{"type": "quantize", "mode": "weight_only", "weight_dtype": "int4", "block_size": 32}]),
        ]
    return out


def prune_candidates() -> list[Candidate]:
    return [Candidate("prune/magnitude", f"prune(magnitude {s})",
                      [{"type": "prune", "method": "magnitude", "sparsity": s}], sparsity=s)
            for s in PRUNE_SPARSITIES]


def training_candidates(allowed: list[str], objective: str) -> list[Candidate]:
    """Structured pruning with recovery (the higher sparsity first) and a distilled student of half the width,
    ordered by their priors for `objective`; they need the job's train dataset."""
    out: list[Candidate] = []
    if "prune" in allowed:
        out += [Candidate("prune/structured", f"prune(structured {s})",
                          [{"type": "prune", "method": "structured", "sparsity": s,
                            "fine_tune": dict(STRUCTURED_RECOVERY)}], sparsity=s) for s in STRUCTURED_SPARSITIES]
    if "distill" in allowed:
        out.append(Candidate("distill/width", f"distill(width {DISTILL_WIDTH})",
                             [{"type": "distill", "student": {"width_ratio": DISTILL_WIDTH}, **DISTILL_TRAINING}]))
    return sorted(out, key=lambda c: PRIORS[objective].get(c.key, 1.0))


def _ladder_order(candidates: list[Candidate]) -> list[Candidate]:
    """The middle sparsity first, then upwards, then downwards: the first trial says the most about the rest."""
    ordered = sorted(candidates, key=lambda c: c.sparsity or 0.0)
    middle = len(ordered) // 2 - (1 if len(ordered) % 2 == 0 else 0)
    return ordered[middle:] + list(reversed(ordered[:middle]))


class _Budget:
    def __init__(self, config: AutoConfig, clock: Callable[[], float]):
        self.trials = config.budget.trials
        self.seconds = config.budget.minutes * 60
        self.clock = clock
        self.started = clock()
        self.used = 0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def exhausted(self) -> str | None:
        if self.used >= self.trials:
            return "trials"
        if self.elapsed >= self.seconds:
            return "minutes"
        return None

    def fraction(self) -> float:
        return min(1.0, max(self.used / self.trials, self.elapsed / self.seconds))


def search(config: AutoConfig, runner: TrialRunner, *, metric: str, has_matmul: bool = True,
           has_train: bool = False, on_progress: Callable[[float], None] | None = None,
           clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Search recipes within `config.budget`; see the module docstring for the order and the rejections.
    `has_train`: the job has a train dataset, so the training recipes (structured pruning, distillation) are
    searched too."""
    budget = _Budget(config, clock)
    baseline = runner.baseline()
    cost_of: Callable[[Measurement], float] = (
        (lambda m: m.latency_ms) if config.objective == "latency" else (lambda m: float(m.size_bytes)))
    base_cost = max(cost_of(baseline), 1e-12)
    trials: list[Trial] = []
    notes: list[str] = []
    measured: dict[str, Trial] = {}  # label -> measured trial
    kinds: dict[str, str] = {}  # label -> the candidate's prior key (`prune/magnitude`, `prune/structured`)
    stopped = "exhausted"

    def best_cost() -> float:
        costs = [cost_of(_as_measurement(t)) for t in measured.values() if t.meets_bound]
        return min([base_cost, *costs])

    numbers = itertools.count(1)
    run_many = getattr(runner, "run_many", None)
    parallelism = getattr(runner, "parallelism", None)

    def record(candidate: Candidate, estimate: dict[str, float] | None, number: int,
               outcome: Measurement | TrialFailed, seconds: float) -> None:
        nonlocal stopped
        if isinstance(outcome, TrialNotStarted):
            stopped = "minutes"
            skip(candidate, str(outcome), estimate)
            return
        trial = Trial(number, candidate.label, candidate.recipe, "measured", estimate=estimate)
        kinds[candidate.label] = candidate.key
        if isinstance(outcome, TrialFailed):
            trial.status, trial.reason, trial.details = "failed", str(outcome)[:300], dict(outcome.details)
        else:
            trial.quality, trial.latency_ms, trial.size_bytes = outcome.quality, outcome.latency_ms, outcome.size_bytes
            trial.drop = baseline.quality - outcome.quality
            trial.meets_bound = trial.drop <= config.max_accuracy_drop + 1e-9
            trial.details = outcome.details
            measured[candidate.label] = trial
        trial.seconds = outcome.seconds if outcome.seconds is not None else seconds
        budget.used += 1
        trials.append(trial)
        log.info("auto trial %d %s: %s", number, candidate.label, trial.as_dict(baseline))
        if on_progress is not None:
            on_progress(0.9 * budget.fraction())

    def run_wave(wave: list[tuple[Candidate, dict[str, float] | None]]) -> None:
        batch = [(next(numbers), candidate.recipe) for candidate, _ in wave]
        if run_many is None:
            for (candidate, estimate), (number, recipe) in zip(wave, batch, strict=True):
                began = clock()
                try:
                    outcome: Measurement | TrialFailed = runner.run(number, recipe)
                except TrialFailed as exc:
                    outcome = exc
                except DeepOptError as exc:
                    outcome = TrialFailed(str(exc))
                record(candidate, estimate, number, outcome, clock() - began)
            return
        began = clock()
        outcomes = run_many(batch, deadline_s=max(0.0, budget.seconds - budget.elapsed))
        for (candidate, estimate), (number, _) in zip(wave, batch, strict=True):
            record(candidate, estimate, number, outcomes[number], clock() - began)

    def run_stage(candidates: list[Candidate], admit: Callable[[Candidate], Verdict]) -> None:
        """Waves of the candidates `admit` lets through (in order), each checked against every result so far."""
        nonlocal stopped
        pending = list(candidates)
        while pending and stopped == "exhausted":
            wave: list[tuple[Candidate, dict[str, float] | None]] = []
            width = 1
            while pending:
                candidate = pending[0]
                reason, estimate = admit(candidate)
                if reason is not None:
                    skip(pending.pop(0), reason, estimate)
                    continue
                if not wave:  # a trial starts only while trials and minutes are left
                    exhausted = budget.exhausted()
                    if exhausted is not None:
                        stopped = exhausted
                        return
                    width = max(1, min(parallelism() if parallelism else 1, budget.trials - budget.used))
                wave.append((pending.pop(0), estimate))
                if len(wave) >= width:
                    break
            if wave:
                run_wave(wave)

    def skip(candidate: Candidate, reason: str, estimate: dict[str, float] | None = None) -> None:
        trials.append(Trial(0, candidate.label, candidate.recipe, "skipped", reason=reason, estimate=estimate))

    def admit_sparsity(candidate: Candidate) -> Verdict:
        if candidate.sparsity is None:  # a distilled student: nothing measured says anything about it
            return None, None
        sparsity = candidate.sparsity
        same = [t for t in measured.values() if kinds.get(t.label) == candidate.key]
        too_lossy = sorted((t for t in same if not t.meets_bound and _sparsity(t) < sparsity), key=_sparsity)
        gain = {t.label: cost_of(_as_measurement(t)) / base_cost for t in same}
        structured = candidate.key == "prune/structured"
        # No gain at one sparsity means none at the others: zeros do not change dense kernels or file sizes. Units
        # removed do, so there only a higher sparsity's lack of gain (or its gain within the bound) rejects.
        no_gain = [t for t in same if gain[t.label] >= NO_GAIN_RATIO and (not structured or _sparsity(t) > sparsity)]
        enough = [t for t in same if structured and t.meets_bound and gain[t.label] < NO_GAIN_RATIO
                  and _sparsity(t) > sparsity]
        if too_lossy:
            return (f"sparsity {_sparsity(too_lossy[0])} already lost {too_lossy[0].drop:.4f} > "
                    f"{config.max_accuracy_drop}; a higher sparsity loses more"), None
        if no_gain:
            why = ("removing fewer units gains less" if structured
                   else "zeros do not make dense kernels faster or files smaller")
            return (f"sparsity {_sparsity(no_gain[0])} gave no {config.objective} gain "
                    f"(x{gain[no_gain[0].label]:.3f}): {why}"), None
        if enough:
            return (f"sparsity {_sparsity(enough[0])} met the bound at x{gain[enough[0].label]:.3f}; removing fewer "
                    f"units cannot make a faster or smaller model"), None
        return None, None

    def admit_combination(candidate: Candidate) -> Verdict:
        prune_trial, quant_trial = (measured[label] for label in candidate.parts)
        drop = (prune_trial.drop or 0.0) + (quant_trial.drop or 0.0)
        cost = (cost_of(_as_measurement(prune_trial)) / base_cost) * (cost_of(_as_measurement(quant_trial)) / base_cost)
        estimate = {"drop": drop, "cost_ratio": cost}
        if drop > config.max_accuracy_drop:
            return f"estimated drop {drop:.4f} (the parts' drops added) > {config.max_accuracy_drop}", estimate
        if cost * base_cost >= COMBINE_MARGIN * best_cost():
            return (f"estimated {config.objective} x{cost:.3f} of the original cannot beat the best so far "
                    f"(x{best_cost() / base_cost:.3f})"), estimate
        return None, estimate

    if not has_train and ("prune" in config.allowed or "distill" in config.allowed):
        skipped = [what for what, kind in (("structured pruning", "prune"), ("distillation", "distill"))
                   if kind in config.allowed]
        notes.append(f"{' and '.join(skipped)} skipped: they train on the job's train dataset "
                     "(give train_dataset_id to search them)")
    priors = PRIORS[config.objective]
    singles: list[Candidate] = []
    if "quantize" in config.allowed:
        singles += sorted(quantize_candidates(config.objective, has_matmul), key=lambda c: priors.get(c.key, 1.0))
    ladder = _ladder_order(prune_candidates()) if "prune" in config.allowed else []
    # Stage 1: every single-pass recipe and the middle of the ladder (nothing measured can reject them yet).
    run_stage(singles + ladder[:1], admit_sparsity)
    # Stage 2: the rest of the ladder, each sparsity checked against the ones measured.
    run_stage(ladder[1:], admit_sparsity)
    # Stage 3: the training recipes (minutes each), with the job's train data only.
    if has_train:
        run_stage(training_candidates(list(config.allowed), config.objective), admit_sparsity)
    # Stage 4: each pruning sparsity that met the bound, then each quantization mode that met it, estimated first;
    # each training recipe that met it, then the best quantization mode.
    pruned = [t for t in measured.values() if kinds.get(t.label) == "prune/magnitude" and t.meets_bound]
    quantized = [t for t in measured.values() if t.label.startswith("quantize(") and t.meets_bound]
    trained = [t for t in measured.values() if kinds.get(t.label) in TRAINING_KEYS and t.meets_bound]
    best_quantized = sorted(quantized, key=lambda t: cost_of(_as_measurement(t)))[:1]
    run_stage([Candidate("combo", f"{p.label} + {q.label}", p.recipe + q.recipe, parts=(p.label, q.label))
               for p, q in [*itertools.product(pruned, quantized), *itertools.product(trained, best_quantized)]],
              admit_combination)

    pareto, chosen, met_bound = _choose(config, runner, baseline, measured, cost_of, notes)
    if on_progress is not None:
        on_progress(1.0)
    return SearchResult(baseline, trials, chosen, met_bound, stopped, budget.elapsed, metric, pareto, notes)


def _choose(config: AutoConfig, runner: TrialRunner, baseline: Measurement, measured: dict[str, Trial],
            cost_of: Callable[[Measurement], float], notes: list[str]) -> tuple[list[int], int | None, bool]:
    """The Pareto front of the measured trials, the chosen trial (None: the original) and whether it meets the
    bound. Latency finalists are timed again, interleaved with the original, so that the choice does not rest on
    one noisy measurement each."""
    done = list(measured.values())
    front = [done[i].number for i in pareto_front([(cost_of(_as_measurement(t)), t.quality or 0.0) for t in done])]
    within = sorted((t for t in done if t.meets_bound), key=lambda t: cost_of(_as_measurement(t)))
    if not within:
        if not done:
            notes.append("no trial was measured within the budget; the original is returned")
            return front, None, False
        on_front = [t for t in done if t.number in front]
        pick = min(on_front, key=lambda t: (t.drop or 0.0, cost_of(_as_measurement(t))))
        notes.append(f"no recipe met the bound of {config.max_accuracy_drop}; returned the Pareto-front trial with "
                     f"the smallest drop ({pick.label}, drop {pick.drop:.4f})")
        return front, pick.number, False
    base_cost = cost_of(baseline)
    if config.objective == "latency":
        finalists = within[:CONFIRM_TOP]
        timed = runner.retime([t.number for t in finalists])
        for trial in finalists:
            trial.details["latency_ms_confirmed"] = round(timed[trial.number], 4)
            trial.details["speedup_confirmed"] = round(timed[0] / max(timed[trial.number], 1e-12), 4)
        base_cost = timed[0]
        best = min(finalists, key=lambda t: timed[t.number])
        best_cost = timed[best.number]
    else:
        best = within[0]
        best_cost = cost_of(_as_measurement(best))
    if best_cost >= base_cost * (LATENCY_WIN if config.objective == "latency" else 1.0):
        notes.append(f"no recipe within the bound beat the original's {config.objective}"
                     + (f" by {100 * (1 - LATENCY_WIN):.0f}%" if config.objective == "latency" else "")
                     + "; the original is returned")
        return front, None, True
    return front, best.number, True


def _as_measurement(trial: Trial) -> Measurement:
    return Measurement(trial.quality or 0.0, trial.latency_ms or 0.0, trial.size_bytes or 0)


def _sparsity(trial: Trial) -> float:
    return float(trial.recipe[0].get("sparsity", 0.0))
