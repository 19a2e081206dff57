"""The `auto` pass on ONNX: search recipes in this process (:class:`.trials.OnnxTrialRunner`), or across the
workers when the job's worker gave a dispatch folder (:mod:`.remote`), and return the chosen model; every trial
goes into the pass's decisions (and so into the job and its report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from deepopt_core.errors import PassFailed
from deepopt_core.passes.auto.config import AutoConfig
from deepopt_core.passes.auto.remote import runner_for
from deepopt_core.passes.auto.search import search
from deepopt_core.passes.auto.trials import OnnxTrialRunner, has_matmul
from deepopt_core.passes.context import PassContext


def resolve_metric(spec: AutoConfig, ctx: PassContext) -> str:
    """`accuracy` when asked for or when the eval data has labels, else `fidelity`."""
    if ctx.eval is None:
        raise PassFailed("auto measures every trial on the eval dataset: give eval_dataset_id")
    has_labels = ctx.eval.labels is not None
    if spec.metric == "accuracy" and not has_labels:
        raise PassFailed("auto: metric 'accuracy' needs an eval dataset with labels")
    return spec.metric or ("accuracy" if has_labels else "fidelity")


def apply_onnx(spec: AutoConfig, model: onnx.ModelProto | str | Path, ctx: PassContext) -> onnx.ModelProto:
    """Search, then return the chosen trial's model (or the model itself when no recipe beat it)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    metric = resolve_metric(spec, ctx)
    runner = runner_for(OnnxTrialRunner(model, ctx, metric=metric, batch_size=spec.batch_size,
                                        num_samples=spec.num_samples))
    try:
        found = search(spec, runner, metric=metric, has_matmul=has_matmul(model), has_train=ctx.train is not None,
                       on_progress=ctx.progress)
        chosen: Any = runner.model_of(found.chosen) if found.chosen is not None else model
    finally:
        runner.close()
    ctx.decisions.update(found.decisions(spec))
    for note in found.notes:
        ctx.warn(f"auto: {note}")
    if ctx.outdir is not None:
        from deepopt_core.passes.auto.plot import write_trials_plot
        from deepopt_core.result import ArtifactResult

        for path in write_trials_plot(ctx.decisions, Path(ctx.outdir), ctx.output_name):
            ctx.artifacts.append(ArtifactResult(path=str(path.resolve()), kind="plot", format=path.suffix[1:],
                                                filename=path.name))
    return chosen
