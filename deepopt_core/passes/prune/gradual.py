"""Gradual pruning on the cubic schedule, with fine-tuning between steps (masks keep pruned weights at zero).

Zhu & Gupta, 2017, "To prune, or not to prune: exploring the efficacy of pruning for model compression",
https://arxiv.org/abs/1710.01878: sparsity rises from ``initial`` to ``final`` over ``steps`` pruning steps as
``s_t = s_f + (s_i - s_f) (1 - t / steps)^3``, pruning fast while many redundant weights remain and slowly near
the end; after each step the model is fine-tuned on train data (a callback) with the masks held fixed, so a
pruned weight never comes back. Magnitude ranking is from Han et al., 2015, https://arxiv.org/abs/1506.02626.

:func:`gradual_prune` is the driver shared with gradual second-order pruning
(:func:`deepopt_core.passes.prune.obs.gradual_obs_prune`); ``steps=1`` is one-shot pruning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from torch import nn

from deepopt_core.passes.prune.recovery import Batch, FineTune, OutputFn, model_output, recover, snapshot
from deepopt_core.passes.prune.sparsity import (
    Masks,
    PruneReport,
    apply_masks,
    cubic_schedule,
    magnitude_masks,
    make_report,
    measured_sparsity,
    select_layers,
)

PruneStep = Callable[[float, Masks | None], Masks]
"""Prunes the model to a sparsity given the current masks (None at first); returns the new keep-masks."""
Callback = Callable[[nn.Module, Masks, int], Any]
"""Called after every pruning step with (model, masks, step index from 1); fine-tunes with the masks fixed."""


def gradual_prune(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    sparsity: float,
    *,
    steps: int,
    prune_step: PruneStep,
    callback: Callback | None = None,
    initial_sparsity: float = 0.0,
) -> tuple[Masks, list[dict[str, Any]]]:
    """Run the cubic schedule: ``prune_step`` to each step's target, then ``callback`` (recovery).

    Args:
        model: the model being pruned (in place).
        layers: the layers the masks refer to.
        sparsity: final sparsity.
        steps: number of pruning steps (1 = one-shot).
        prune_step: prunes to a target sparsity, honouring the current masks.
        callback: recovery after each step (masks are re-applied after it, whatever it does).
        initial_sparsity: sparsity the schedule starts from.

    Returns:
        (final masks, one record per step: target, measured sparsity, seconds, callback result).
    """
    masks: Masks | None = None
    history: list[dict[str, Any]] = []
    for index, target in enumerate(cubic_schedule(sparsity, steps, initial_sparsity), start=1):
        started = time.perf_counter()
        masks = prune_step(target, masks)
        apply_masks(layers, masks)
        record: dict[str, Any] = {"step": index, "target": round(target, 6)}
        pruned_s = time.perf_counter() - started
        if callback is not None:
            result = callback(model, masks, index)
            apply_masks(layers, masks)
            if isinstance(result, dict):
                record["recovery"] = result
        record["sparsity"] = round(measured_sparsity(model, layers).sparsity, 6)
        record["prune_seconds"] = round(pruned_s, 3)
        record["seconds"] = round(time.perf_counter() - started, 3)
        history.append(record)
    assert masks is not None
    return masks, history


def recovery_callback(
    fine_tune: FineTune | Mapping[str, Any] | None,
    train_data: Sequence[Batch] | None,
    layers: Mapping[str, nn.Module],
    *,
    teacher: nn.Module | None = None,
    output_fn: OutputFn = model_output,
) -> Callback | None:
    """The default callback: :func:`deepopt_core.passes.prune.recovery.recover` with the step's masks."""
    spec = FineTune.from_config(fine_tune)
    if spec is None or spec.epochs <= 0 or not train_data:
        return None

    def callback(model: nn.Module, masks: Masks, _step: int) -> dict[str, Any]:
        return recover(model, train_data, spec, teacher=teacher, masks=masks, layers=layers, output_fn=output_fn)

    return callback


def gradual_magnitude_prune(
    model: nn.Module,
    sparsity: float,
    *,
    steps: int = 1,
    scope: Literal["global", "layer"] = "global",
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_head: bool = True,
    fine_tune: FineTune | Mapping[str, Any] | None = None,
    train_data: Sequence[Batch] | None = None,
    callback: Callback | None = None,
    initial_sparsity: float = 0.0,
    output_fn: OutputFn = model_output,
) -> PruneReport:
    """Magnitude pruning in place, one-shot (``steps=1``) or gradual on the cubic schedule with fine-tuning.

    Args:
        model: an ``nn.Module`` (weights of Linear/Conv layers are masked in place).
        sparsity: final fraction of zeros among the selected weights.
        steps: ``schedule.steps``: pruning steps on the cubic schedule (1 = one-shot).
        scope: rank magnitudes across all selected layers (``"global"``) or per layer.
        targets: module names/globs to prune (None = all Linear/Conv).
        exclude: module names/globs to leave dense.
        keep_head: leave the classifier head dense.
        fine_tune: recovery after every step (``{"epochs", "lr", ...}``; distillation from the dense model when
            the data has no labels).
        train_data: batches for recovery.
        callback: custom recovery ``(model, masks, step)`` instead of `fine_tune`.
        initial_sparsity: where the schedule starts.
        output_fn: the output recovery trains/distills.

    Returns:
        The report; ``details["keep"]`` holds the final keep-masks.
    """
    started = time.perf_counter()
    layers = select_layers(model, targets, exclude, keep_head=keep_head)
    if not layers:
        raise ValueError("no prunable layers selected")
    spec = FineTune.from_config(fine_tune)
    teacher = snapshot(model) if spec is not None and spec.epochs > 0 and spec.method != "task" else None
    if callback is None:
        callback = recovery_callback(spec, train_data, layers, teacher=teacher, output_fn=output_fn)

    def step(target: float, _masks: Masks | None) -> Masks:
        return magnitude_masks(layers, target, scope)

    masks, history = gradual_prune(model, layers, sparsity, steps=steps, prune_step=step, callback=callback,
                                   initial_sparsity=initial_sparsity)
    report = make_report("magnitude", model, layers, sparsity, time.perf_counter() - started, scope=scope,
                         schedule={"steps": steps, "initial_sparsity": initial_sparsity})
    report.steps = history
    report.details["keep"] = masks
    return report
