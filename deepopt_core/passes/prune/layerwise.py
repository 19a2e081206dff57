"""Second-order pruning with each layer's exact Hessian of its output error (``obs`` with ``hessian="inputs"``).

Optimal Brain Compression (Frantar & Alistarh, 2022, https://arxiv.org/abs/2208.11580) and SparseGPT (Frantar &
Alistarh, 2023, https://arxiv.org/abs/2301.00774) apply the Optimal Brain Surgeon to one layer at a time: the loss
is the squared error of the layer's outputs on calibration inputs X, ``||W X - W' X||^2``, whose Hessian with
respect to every row of W is exactly ``H = 2 X X^T`` (``[inputs, inputs]``, shared by all rows). Unlike the
empirical Fisher of :mod:`deepopt_core.passes.prune.obs`, it needs no gradients, is exact rather than
block-diagonal (every weight of a row interacts with every other), and is cheap: one forward pass per layer.

The weights of a row are pruned column by column with the OBS saliency ``w_q^2 / [H^-1]_qq`` and update
``dw = -w_q / [H^-1]_qq * H^-1[q, :]``, using the Cholesky factor of ``H^-1`` so the updates of all rows share one
factorisation (SparseGPT, Algorithm 1): the mask is chosen per block of `column_block` columns over all rows
(adaptive mask selection), or per group of M consecutive weights for N:M.

Two steps go beyond SparseGPT. The column-by-column updates only adjust columns not yet processed, so once the
mask is chosen every row's kept weights are refit to the least-squares optimum (:func:`refit_rows`, conjugate
gradients for all rows at once). And the refit's target is the unpruned model's output for the same sample
(``W x_dense``, from a dense copy run alongside), not this layer's own output on the already-degraded inputs, so
every layer also corrects what the layers before it lost.

Layers are pruned in forward order and each layer's Hessian is measured on the inputs it receives from the
already-pruned layers before it. Layers that read the same input tensor (the query, key and value projections of
an attention block) share one forward pass, and each pass stops as soon as the layers' inputs have been captured.
``scope="global"`` takes each layer's sparsity from a global magnitude ranking (:func:`global_allocation`).

Measured: the `obs` rows marked `input Hessians` of benchmarks/results/pruning.md.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from deepopt_core.formats.torch_common import kind_of, unwrap
from deepopt_core.passes.prune.obs import split_supported
from deepopt_core.passes.prune.recovery import (
    Batch,
    FineTune,
    OutputFn,
    model_output,
    recover,
    snapshot,
)
from deepopt_core.passes.prune.sparsity import (
    Masks,
    PruneReport,
    apply_masks,
    conv_columns,
    input_dim_view,
    magnitude_masks,
    make_report,
    mask_in_weight_shape,
    select_layers,
    weight_of,
)

log = logging.getLogger("deepopt.passes.prune")

COLUMN_BLOCK = 128  # SparseGPT's default: masks chosen over 128 columns x all rows at a time


class _Captured(Exception):
    """Raised by a hook to stop a forward pass once the wanted inputs are captured."""


def input_rows(module: nn.Module, inp: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's input as rows ``[n, inputs]`` matching the weight's 2-D view (``unfold`` for convolutions;
    ``[n, groups, inputs]`` for a grouped convolution, whose groups of weight rows each read their own inputs).

    `token_mask` (``[batch, tokens]``, e.g. an attention mask) drops padding tokens of ``[batch, tokens, in]`` inputs.
    """
    if kind_of(module) in ("Conv1d", "Conv2d"):
        cols = conv_columns(module, inp)  # [b, in*k, L]
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        groups = int(getattr(module, "groups", 1))
        # A grouped (depthwise) convolution: [n, groups, in/groups * k], each group's slice of the columns.
        return rows if groups == 1 else rows.reshape(rows.shape[0], groups, -1)
    if token_mask is not None and inp.dim() == 3 and tuple(inp.shape[:2]) == tuple(token_mask.shape):
        return inp[token_mask.bool()]
    return inp.reshape(-1, inp.shape[-1])


def forward_groups(model: nn.Module, layers: Mapping[str, nn.Module], batch: Batch,
                   output_fn: OutputFn) -> tuple[list[list[str]], set[str]]:
    """The layers in the order the model first calls them, grouped where consecutive layers read the same tensor,
    and the layers called more than once per forward (shared weights; each alone in its group, and their passes
    run to the end). Layers never called are left out.
    """
    calls: list[tuple[str, torch.Tensor]] = []

    def hook(name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple[Any, ...]) -> None:
            calls.append((name, args[0]))  # the reference keeps the tensor alive: identities stay unique

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            output_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    counts: dict[str, int] = {}
    for name, _ in calls:
        counts[name] = counts.get(name, 0) + 1
    groups: list[list[str]] = []
    last_input: torch.Tensor | None = None
    seen: set[str] = set()
    for name, tensor in calls:
        if name in seen:
            continue
        seen.add(name)
        shared = groups and last_input is tensor and all(counts[n] == 1 for n in groups[-1]) and counts[name] == 1
        if shared:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = tensor
    return groups, {n for n, c in counts.items() if c > 1}


@dataclass
class LayerStatistics:
    """What one layer's inputs on the calibration data give: ``hessian = sum x x^T`` over its input rows in the
    model being pruned, and with a dense reference, ``cross = sum x x_ref^T`` (the same rows' inputs in the
    unpruned model)."""

    hessian: torch.Tensor  # [inputs, inputs]; [groups, inputs, inputs] for a grouped convolution
    rows: int
    cross: torch.Tensor | None = None

    def add(self, x: torch.Tensor, dense: torch.Tensor | None) -> None:
        """Add input rows `x` (and the dense model's rows for the same samples)."""
        if x.dim() == 3:  # grouped: one Hessian per group
            by_group = x.transpose(0, 1)  # [groups, n, inputs]
            self.hessian.baddbmm_(by_group.transpose(1, 2), by_group)
            if self.cross is not None and dense is not None:
                self.cross.baddbmm_(by_group.transpose(1, 2), dense.transpose(0, 1))
        else:
            self.hessian.addmm_(x.t(), x)
            if self.cross is not None and dense is not None:
                self.cross.addmm_(x.t(), dense)
        self.rows += x.shape[0]


def _capture(model: nn.Module, layers: Mapping[str, nn.Module], group: Sequence[str], batch: Batch,
             output_fn: OutputFn, stop_early: bool,
             on_input: Callable[[str, torch.Tensor], None]) -> None:
    """Run `model` on `batch`, handing every call's input rows of the `group` layers to `on_input`."""
    done: set[str] = set()
    mask = batch.get("attention_mask")

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...]) -> None:
            on_input(name, input_rows(module, args[0].detach(), mask).float())
            done.add(name)
            if stop_early and len(done) == len(group):
                raise _Captured

        return fn

    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in group]
    try:
        with torch.no_grad(), contextlib.suppress(_Captured):
            output_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()


def layer_statistics(model: nn.Module, layers: Mapping[str, nn.Module], group: Sequence[str],
                     data: Sequence[Batch], output_fn: OutputFn, *, stop_early: bool = True,
                     reference: tuple[nn.Module, Mapping[str, nn.Module]] | None = None) -> dict[str, LayerStatistics]:
    """The :class:`LayerStatistics` of each layer of `group` from forward passes on `data` (with `reference`,
    the dense model and its layers of the same names, also the cross term)."""
    stats: dict[str, LayerStatistics] = {}
    for batch in data:
        dense: dict[str, list[torch.Tensor]] = {n: [] for n in group}
        if reference is not None:

            def keep_dense(name: str, x: torch.Tensor, store: dict[str, list[torch.Tensor]] = dense) -> None:
                store[name].append(x)

            _capture(reference[0], reference[1], group, batch, output_fn, stop_early, keep_dense)
        calls: dict[str, int] = {n: 0 for n in group}

        def add(name: str, x: torch.Tensor, dense: dict[str, list[torch.Tensor]] = dense,
                calls: dict[str, int] = calls) -> None:
            entry = stats.get(name)
            if entry is None:
                shape = (*x.shape[1:-1], x.shape[-1], x.shape[-1])
                entry = stats[name] = LayerStatistics(torch.zeros(shape), 0,
                                                      torch.zeros(shape) if reference else None)
            entry.add(x, dense[name][calls[name]] if reference is not None else None)
            calls[name] += 1

        _capture(model, layers, group, batch, output_fn, stop_early, add)
    return stats


def prune_rows(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *, dampening: float = 0.01,
               nm: tuple[int, int] | None = None, already: torch.Tensor | None = None,
               column_block: int = COLUMN_BLOCK, refit: bool = True,
               cross: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one weight ``[rows, inputs]`` with Hessian ``[inputs, inputs]``, then (with `refit`) the
    exact optimum of the kept weights of every row for the chosen mask.

    SparseGPT's column-by-column updates only adjust the columns not yet processed, so for its own mask it stops
    short of the least-squares optimum (on correlated synthetic inputs its output error is about 1.4x the
    optimum's); :func:`refit_rows` solves each row's kept weights for the optimum (``H_KK w_K = (H w)_K``).

    Args:
        weight: the 2-D weight view.
        hessian: ``X X^T`` (any positive scale).
        sparsity: fraction pruned within every block of `column_block` columns (ignored with `nm`).
        dampening: added to the diagonal, relative to its mean (inputs that never fire get weight 0).
        nm: ``(n, m)``: keep n of every m consecutive weights of a row instead.
        already: bool ``[rows, inputs]``, weights that must be pruned (earlier steps of a schedule).
        column_block: columns whose mask is chosen together.
        refit: solve the kept weights of every row exactly after the mask is chosen.
        cross: ``sum x x_ref^T`` with the dense model's inputs: the refit then matches the dense model's outputs
            (``W x_ref``) rather than this layer's own outputs on the pruned model's inputs, so each layer also
            corrects the error the layers before it left.

    Returns:
        (the pruned and updated weight, its keep-mask).
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    # The solution does not depend on H's scale, but its factorization does: inputs of ~1e-19 (a randomly
    # initialised MobileNet) give subnormal entries on which Cholesky fails, so H is brought to a mean diagonal of 1.
    scale = float(hessian.detach().float().diagonal().mean())
    scale = scale if scale > 0 and scale == scale and scale != float("inf") else 1.0
    hessian = hessian.detach().float() / scale
    cross = cross.detach().float() / scale if cross is not None else None
    h = hessian.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(dampening * float(h.diagonal().mean()))
    original = w.clone()
    try:
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
        hinv = torch.linalg.cholesky(hinv, upper=True)
    except torch.linalg.LinAlgError:  # numerically not positive definite: dampen more
        h.diagonal().add_(0.1 * float(h.diagonal().mean()))
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        column_block = max(m, column_block // m * m)
    for start in range(0, cols, column_block):
        end = min(start + column_block, cols)
        count = end - start
        w1 = w[:, start:end].clone()
        errors = torch.zeros_like(w1)
        hinv1 = hinv[start:end, start:end]
        diag = hinv1.diagonal()
        forced = already[:, start:end] if already is not None else torch.zeros(rows, count, dtype=torch.bool)
        if nm is None:
            score = (w1.pow(2) / diag.pow(2)).masked_fill(forced, -1.0)
            k = int(round(sparsity * w1.numel()))
            mask1 = torch.zeros(w1.numel(), dtype=torch.bool)
            if k > 0:
                mask1[torch.topk(score.reshape(-1), k, largest=False).indices] = True
            mask1 = mask1.reshape(rows, count) | forced
        else:
            mask1 = torch.zeros(rows, count, dtype=torch.bool)
        for i in range(count):
            if nm is not None and i % nm[1] == 0:
                width = min(nm[1], count - i)
                score = (w1[:, i : i + width].pow(2) / diag[i : i + width].pow(2)).masked_fill(
                    forced[:, i : i + width], -1.0)
                drop = max(0, width - nm[0])  # a last, partial group keeps up to n too
                mask1.scatter_(1, i + torch.topk(score, drop, dim=1, largest=False).indices, True)
            col = w1[:, i]
            d = diag[i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            errors[:, i] = err
        w[:, start:end] = w1
        pruned[:, start:end] = mask1
        w[:, end:] -= errors @ hinv[start:end, end:]
    if refit:
        target = None
        if cross is not None:  # (C + lambda I) w: the same pull towards the dense weights as the dampened H
            target = original @ cross.t() + (h.diagonal() - hessian.diagonal().float()) * original
        w = refit_rows(original, h, ~pruned, start=w, target=target)
    w[pruned] = 0.0
    return w, ~pruned


def refit_rows(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, start: torch.Tensor | None = None,
               *, target: torch.Tensor | None = None, iterations: int = 300,
               tolerance: float = 1e-6) -> torch.Tensor:
    """The kept weights of every row that best reproduce `weight`'s outputs: ``argmin (w' - w)^T H (w' - w)``
    with ``w'`` zero outside `keep`, i.e. ``H_KK w'_K = (H w)_K`` for every row (`target` replaces ``H w``).

    Solved for all rows at once by conjugate gradients with a Jacobi preconditioner, from `start` (e.g. the
    SparseGPT result): one ``[rows, inputs] x [inputs, inputs]`` product per iteration, where a direct solve would
    factor a separate ``[inputs, inputs]`` system per row (BERT-base's FFN output layer: 768 factorizations of
    3072 x 3072). `hessian` must be positive definite (dampened).
    """
    k = keep.to(hessian.dtype)
    rhs = (weight @ hessian if target is None else target) * k  # H is symmetric
    x = (start if start is not None else weight) * k
    precondition = k / hessian.diagonal().clamp_min(1e-12)
    residual = rhs - (x @ hessian) * k
    z = residual * precondition
    direction = z.clone()
    rz = (residual * z).sum(1)
    limit = tolerance * rhs.norm(dim=1).clamp_min(1e-30)
    for _ in range(iterations):
        if bool((residual.norm(dim=1) <= limit).all()):
            break
        product = (direction @ hessian) * k
        alpha = rz / (direction * product).sum(1).clamp_min(1e-30)
        x = x + alpha.unsqueeze(1) * direction
        residual = residual - alpha.unsqueeze(1) * product
        z = residual * precondition
        rz_next = (residual * z).sum(1)
        direction = z + (rz_next / rz.clamp_min(1e-30)).unsqueeze(1) * direction
        rz = rz_next
    return x * k


def global_allocation(layers: Mapping[str, nn.Module], sparsity: float) -> dict[str, float]:
    """Per-layer sparsities from one magnitude ranking of all the layers' weights (their size-weighted mean is
    `sparsity`); each layer is then pruned to its own sparsity with OBS.

    Why magnitude: per-weight OBS saliencies ignore that removing most of a layer costs far more than the sum of
    its single-weight losses, so a global ranking of them empties whole layers (on the digits CNN it pruned the
    512-input Linear to 100% at 70%: 8% accuracy); the magnitude ranking gives a sound allocation, and OBS then
    chooses and compensates within each layer (digits CNN at 90%: 99.6% against 22.7% for global magnitude
    alone). Already-zero weights rank first.
    """
    keep = magnitude_masks(layers, sparsity, "global")
    return {n: 1.0 - float(keep[n].float().mean()) for n in keep}


def _prune_layer_rows(view: torch.Tensor, entry: LayerStatistics, sparsity: float, *, dampening: float,
                      nm: tuple[int, int] | None, already: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prune_rows` on one layer; a grouped convolution's rows are pruned group by group, each with the
    Hessian of its own inputs (the weight's output channels are ordered by group)."""
    if entry.hessian.dim() == 2:
        return prune_rows(view, entry.hessian, sparsity, dampening=dampening, nm=nm, already=already,
                          cross=entry.cross)
    groups = entry.hessian.shape[0]
    per_group = view.shape[0] // groups
    weights, keeps = [], []
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        new, keep = prune_rows(view[rows], entry.hessian[g], sparsity, dampening=dampening, nm=nm,
                               already=already[rows] if already is not None else None,
                               cross=entry.cross[g] if entry.cross is not None else None)
        weights.append(new)
        keeps.append(keep)
    return torch.cat(weights), torch.cat(keeps)


def _set_view(module: nn.Module, new_view: torch.Tensor) -> None:
    weight = weight_of(module)
    with torch.no_grad():
        view = input_dim_view(module, weight)
        view.copy_(new_view.to(weight.dtype))


def layerwise_obs_prune(
    model: nn.Module,
    sparsity: float,
    *,
    data: Sequence[Batch],
    dampening: float = 1e-2,
    nm: tuple[int, int] | None = None,
    output_fn: OutputFn = model_output,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_head: bool = True,
    scope: Literal["global", "layer"] = "layer",
    masks: Masks | None = None,
    match_dense: bool = True,
    fine_tune: FineTune | Mapping[str, Any] | None = None,
    train_data: Sequence[Batch] | None = None,
    progress: Callable[[float], None] | None = None,
) -> PruneReport:
    """Prune a model in place with layer-wise OBS (SparseGPT), every layer to `sparsity` (or to N:M with `nm`).

    Args:
        model: an eager module (Linear / Conv1d / Conv2d / Hugging Face Conv1D layers are pruned).
        sparsity: fraction of every selected layer's weights set to zero.
        data: calibration batches (labels unused); their inputs define the Hessians.
        dampening: relative to the mean Hessian diagonal.
        nm: ``(n, m)`` semi-structured pattern instead of unstructured `sparsity`.
        output_fn: how the model is called on a batch.
        targets / exclude / keep_head: which layers (:func:`select_layers`).
        scope: ``"layer"``: every layer to `sparsity`; ``"global"``: each layer's sparsity from one magnitude
            ranking of all the layers' weights (:func:`global_allocation`), the choice within it by OBS.
        masks: keep-masks of already-pruned weights (gradual pruning): they stay pruned.
        match_dense: refit every layer to the unpruned model's outputs (its inputs captured from a copy of the
            model as it was before this call) instead of to its own outputs on the pruned inputs.
        fine_tune: recovery after pruning; `train_data`: its batches (default: `data`).
        progress: called with the fraction of layers done.

    Returns:
        The report; keep-masks in ``report.details["keep"]``.
    """
    started = time.perf_counter()
    layers = select_layers(model, targets, exclude, keep_head=keep_head)
    if not layers:
        raise ValueError("no prunable layers selected")
    if not data:
        raise ValueError("layer-wise OBS needs calibration data")
    layers, dense_layers = split_supported(layers)
    spec = FineTune.from_config(fine_tune)
    teacher = snapshot(model) if spec is not None and spec.epochs > 0 and spec.method != "task" else None
    root = unwrap(model)
    was_training = root.training
    root.eval()
    reference = None
    if match_dense:
        dense = teacher if teacher is not None else snapshot(model)
        by_name = dict(unwrap(dense).named_modules())
        reference = (dense, {n: by_name[n] for n in layers})
    groups, repeated = forward_groups(model, layers, data[0], output_fn)
    called = {n for g in groups for n in g}
    skipped = [n for n in layers if n not in called]
    if skipped:
        log.info("layer-wise obs: layers never called on the calibration data stay dense: %s", skipped[:10])
    kept: Masks = {}
    passes = 0
    targets_by_layer = {n: sparsity for n in layers}
    if scope == "global" and nm is None:
        targets_by_layer = global_allocation(layers, sparsity)
    try:
        for index, group in enumerate(groups):
            stats = layer_statistics(model, layers, group, data, output_fn,
                                     stop_early=not repeated.intersection(group), reference=reference)
            passes += 1
            for name in group:
                if name not in stats:
                    continue
                module = layers[name]
                view = input_dim_view(module, weight_of(module)).detach()
                already = None
                if masks is not None and name in masks:
                    already = ~input_dim_view(module, masks[name].to(view.device)).bool()
                entry = stats[name]
                new, keep = _prune_layer_rows(view, entry, targets_by_layer[name], dampening=dampening, nm=nm,
                                              already=already)
                _set_view(module, new)
                kept[name] = mask_in_weight_shape(module, keep)
            if progress is not None:
                progress((index + 1) / len(groups))
    finally:
        root.train(was_training)
    apply_masks(layers, kept)
    recovery: dict[str, Any] = {}
    if spec is not None and spec.epochs > 0:
        recovery = recover(model, train_data if train_data is not None else data, spec, teacher=teacher,
                           masks=kept, layers={n: layers[n] for n in kept}, output_fn=output_fn)
    report = make_report("obs", model, list(kept), sparsity, time.perf_counter() - started, hessian="inputs",
                         scope=scope, dampening=dampening, forward_passes=passes, match_dense=match_dense,
                         recovery=recovery, dense_layers=dense_layers,
                         **({"pattern": f"{nm[0]}:{nm[1]}"} if nm else {}))
    report.details["keep"] = kept
    return report
