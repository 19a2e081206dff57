"""The prune methods on the pipeline's torch modules: gradual magnitude, OBS, N:M and structured pruning.

The pipeline hands a pass a TorchScript module, a ``torch.export`` GraphModule or a Hugging Face wrapper, each
called with the model inputs positionally. The methods of this package work on eager modules and read batches of
named tensors, so this module adapts: a Hugging Face model is unwrapped (it takes its inputs by name), a
``torch.export`` GraphModule gets its ``aten.linear``/``aten.conv`` calls lifted back into Linear/Conv modules (which
structured pruning can replace with smaller ones), and non-HF models are called positionally in the order of the
model's inputs. TorchScript modules take weight edits and training (magnitude, N:M by magnitude, fine-tuning) but
no hooks or new modules, so OBS and structured pruning refuse them at submit time.

Datasets become batches through the same loader as the training passes (.npz arrays, or .jsonl text tokenized with
the model's tokenizer): OBS and N:M-by-OBS estimate the Fisher on the calibration data (else the train data), and
Taylor/Fisher importance of structured pruning uses the same; ``fine_tune`` recovers on the train data.
"""

from __future__ import annotations

import contextlib
import logging
import time
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from deepopt_core.errors import PassFailed
from deepopt_core.formats.torch_common import unwrap
from deepopt_core.passes.context import PassContext
from deepopt_core.passes.prune.config import (
    MagnitudePruneConfig,
    NMPruneConfig,
    ObsPruneConfig,
    StructuredPruneConfig,
)  # fmt: skip
from deepopt_core.passes.prune.recovery import Batch, FineTune, OutputFn, make_batches, model_output

log = logging.getLogger("deepopt.passes.prune")

CALIBRATION_ROWS = 1024  # at most this many rows of the calibration data feed Fisher/Taylor estimates
MAX_TOKENS = 128


def _keep_mode(self: nn.Module, mode: bool = True) -> nn.Module:
    return self


@contextlib.contextmanager
def _mode_switchable(core: nn.Module) -> Iterator[None]:
    """A torch.export program raises on ``train()``/``eval()`` (its mode is fixed in the graph); let the methods
    call them as no-ops while they run, and put the program's own methods back afterwards."""
    saved = {name: core.__dict__[name] for name in ("train", "eval") if name in core.__dict__}
    for name in saved:
        setattr(core, name, types.MethodType(_keep_mode, core))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(core, name, method)


def _positional(names: list[str]) -> OutputFn:
    def output(model: nn.Module, batch: Batch) -> torch.Tensor:
        from deepopt_core.passes.prune.recovery import _primary

        return _primary(unwrap(model)(*[batch[n] for n in names if n in batch]))

    return output


def _batches(ctx: PassContext, role: str, batch_size: int, *, shuffle: bool = False,
             limit: int | None = None) -> list[dict[str, torch.Tensor]] | None:
    dataset = getattr(ctx, role)
    if dataset is None:
        return None
    from deepopt_core.passes.finetune.training import load_train_data

    data = load_train_data(dataset, ctx.info, ctx.tokenizer, max_length=MAX_TOKENS)
    return make_batches(data.features, batch_size, labels=data.labels, shuffle=shuffle, seed=0, limit=limit)


def _fine_tune(spec: Any, ctx: PassContext) -> FineTune | None:
    settings = spec.fine_tune
    if settings is None:
        return None
    method = settings.method
    if method == "auto":  # decided here, so that task training never copies the model as a teacher
        method = "task" if ctx.train is not None and ctx.train.labels is not None else "distill"
    return FineTune(epochs=settings.epochs, lr=settings.lr, method=method, batch_size=settings.batch_size)


def _measured(core: nn.Module) -> dict[str, Any]:
    """Zeros among every Linear/Conv weight of the (lifted) module: overall and per layer, the head included."""
    from deepopt_core.passes.prune.sparsity import measured_sparsity

    report = measured_sparsity(core)
    return {"sparsity": round(report.sparsity, 6), "layers": report.layers}


def apply_method(spec: Any, model: Any, ctx: PassContext) -> Any:
    """Run `spec`'s method on `model` in place and record the decisions; returns the model for the outputs.

    Raises:
        PassFailed: the model cannot take the method, has nothing to prune, or lacks the data it needs.
    """
    from deepopt_core.passes.finetune.modules import check_trainable, is_hf, set_mode, trainable_core, write_config

    check_trainable(model)
    hf = is_hf(model)
    core = trainable_core(model)
    needs_eager = isinstance(spec, ObsPruneConfig | StructuredPruneConfig) or (
        isinstance(spec, NMPruneConfig) and spec.selection == "obs")
    if needs_eager and isinstance(core, torch.jit.ScriptModule):
        raise PassFailed(f"prune method {spec.method!r} needs a torch.export or Hugging Face model; TorchScript "
                         "modules take no hooks or new layers")
    output_fn = model_output if hf else _positional(ctx.input_names)
    fine_tune = _fine_tune(spec, ctx)
    train = _batches(ctx, "train", fine_tune.batch_size or 32, shuffle=True) if fine_tune else None
    if fine_tune is not None and not train:
        raise PassFailed("prune: fine_tune needs train data (train_dataset_id)")
    started = time.perf_counter()
    ctx.progress(0.05)
    try:
        with _mode_switchable(core), torch.enable_grad():
            decisions = _run(spec, core, ctx, output_fn, fine_tune, train)
    except ValueError as exc:
        raise PassFailed(f"prune: {str(exc).splitlines()[0][:500]}") from None
    set_mode(core, False)
    for param in core.parameters():
        param.requires_grad_(False)
    if hf and isinstance(spec, StructuredPruneConfig) and decisions.get("config_shapes") and ctx.hf_folder:
        ctx.hf_folder = write_config(core, ctx.hf_folder, ctx.workdir) or ctx.hf_folder
    decisions.update(_measured(core))
    decisions["seconds"] = round(time.perf_counter() - started, 3)
    if fine_tune is not None:
        decisions["fine_tune"] = {"epochs": fine_tune.epochs, "lr": fine_tune.lr, "method": fine_tune.method}
    ctx.decisions.update(decisions)
    ctx.progress(1.0)
    return model


def _calibration(ctx: PassContext, rows: int, what: str) -> list[dict[str, torch.Tensor]]:
    data = _batches(ctx, "calibration", 32, limit=rows) or _batches(ctx, "train", 32, limit=rows)
    if not data:
        raise PassFailed(f"prune: {what} needs data: give calibration_dataset_id or train_dataset_id")
    return data


def _run(spec: Any, core: nn.Module, ctx: PassContext, output_fn: OutputFn, fine_tune: FineTune | None,
         train: list[dict[str, torch.Tensor]] | None) -> dict[str, Any]:
    common: dict[str, Any] = {"targets": spec.targets, "exclude": spec.exclude, "keep_head": spec.keep_head}
    if isinstance(spec, MagnitudePruneConfig):
        from deepopt_core.passes.prune.gradual import gradual_magnitude_prune

        steps = spec.schedule.steps if spec.schedule else 1
        initial = spec.schedule.initial_sparsity if spec.schedule else 0.0
        report = gradual_magnitude_prune(core, spec.sparsity, steps=steps, scope=spec.scope, fine_tune=fine_tune,
                                         train_data=train, initial_sparsity=initial, output_fn=output_fn, **common)
        return _unstructured(report, spec)
    if isinstance(spec, ObsPruneConfig):
        from deepopt_core.passes.prune.obs import gradual_obs_prune, obs_prune

        data = _calibration(ctx, max(spec.num_gradients, 32), "obs")
        settings: dict[str, Any] = {"data": data, "block_size": spec.block_size, "num_gradients": spec.num_gradients,
                                    "dampening": spec.dampening, "scope": spec.scope, "update": spec.update,
                                    "hessian": spec.hessian,
                                    "output_fn": output_fn, "fine_tune": fine_tune, "train_data": train, **common}
        if spec.schedule is not None and spec.schedule.steps > 1:
            report = gradual_obs_prune(core, spec.sparsity, steps=spec.schedule.steps,
                                       initial_sparsity=spec.schedule.initial_sparsity, **settings)
        else:
            report = obs_prune(core, spec.sparsity, **settings)
        return _unstructured(report, spec, ctx)
    if isinstance(spec, NMPruneConfig):
        from deepopt_core.passes.prune.nm import nm_prune

        nm_data = _calibration(ctx, max(spec.num_gradients, 32), "OBS selection") if spec.selection == "obs" else None
        report = nm_prune(core, spec.n, spec.m, method=spec.selection, hessian=spec.hessian, data=nm_data,
                          block_size=spec.block_size, num_gradients=spec.num_gradients, dampening=spec.dampening,
                          output_fn=output_fn, fine_tune=fine_tune, train_data=train, **common)
        verification = report.details.get("verification") or {}
        if not verification.get("ok"):
            raise PassFailed(f"prune: the {spec.n}:{spec.m} pattern check failed: {verification}")
        return {**_unstructured(report, spec, ctx), "pattern": f"{spec.n}:{spec.m}", "selection": spec.selection,
                "hessian": spec.hessian if spec.selection == "obs" else None}
    if isinstance(spec, StructuredPruneConfig):
        from deepopt_core.passes.prune.structured import structured_prune

        needs_data = spec.importance != "magnitude" or spec.reconstruct
        unit_data = _calibration(ctx, CALIBRATION_ROWS, f"{spec.importance} importance") if needs_data else None
        result = structured_prune(core, spec.sparsity, importance=spec.importance, scope=spec.scope,
                                  kinds=spec.units, data=unit_data, output_fn=output_fn, round_to=spec.round_to,
                                  reconstruct=spec.reconstruct, fine_tune=fine_tune, train_data=train, **common)
        out = result.as_dict()
        out["target_sparsity"] = out.pop("sparsity")
        return out
    raise PassFailed(f"unknown prune method {getattr(spec, 'method', None)!r}")


def _unstructured(report: Any, spec: Any, ctx: PassContext | None = None) -> dict[str, Any]:
    left = {**(report.details.get("dense_layers") or {}), **(report.details.get("by_magnitude") or {})}
    if ctx is not None and left:
        how = "chosen by magnitude" if report.details.get("by_magnitude") else "left dense"
        ctx.warn(f"prune: {len(left)} layers second-order pruning cannot take were {how}: "
                 + "; ".join(f"{name}: {reason}" for name, reason in list(left.items())[:5]))
    out = report.as_dict()
    out.pop("keep", None)
    out["pruned_sparsity"] = out.pop("sparsity")
    out["pruned_layers"] = sorted(out.pop("layers"))
    out["scope"] = getattr(spec, "scope", None)
    return out
