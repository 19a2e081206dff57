"""N:M semi-structured sparsity: at most N nonzeros in every group of M consecutive weights along the input
dimension (2:4 = 50%, the pattern NVIDIA Ampere sparse tensor cores run).

Groups run along the input dimension of each output row: ``in_features`` of a Linear (Hugging Face ``Conv1D``,
stored ``[in, out]``, is handled transposed), in-channels x kernel of a Conv (the weight viewed as
``[out, in * kh * kw]``); for ONNX, MatMul weights are ``[in, out]`` (groups down the columns), Gemm weights
``[out, in]`` with ``transB=1`` and ``[in, out]`` without, Conv ``[out, in, kh, kw]``. A row whose length is not a
multiple of M ends with a shorter group, which also keeps at most N.

The N kept weights of each group are chosen by magnitude (Mishra et al., 2021, "Accelerating Sparse Deep Neural
Networks", https://arxiv.org/abs/2104.08378) or by the OBS saliency with the optimal update of the remaining
weights (second-order N:M as in oBERT, Kurtic et al., 2022, https://arxiv.org/abs/2203.07259; see
:mod:`deepopt_core.passes.prune.obs`). :func:`verify_nm` / :func:`verify_nm_onnx` check the pattern.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from deepopt_core.formats.onnx_inspect import WeightRef, weight_refs
from deepopt_core.passes.prune.obs import (
    BlockInverseFisher,
    Update,
    compute_inverse_fishers,
    plan_groups,
    prune_layer_obs,
    saliency,
    split_supported,
)
from deepopt_core.passes.prune.recovery import (
    Batch,
    FineTune,
    Objective,
    OutputFn,
    model_output,
    recover,
    snapshot,
)
from deepopt_core.passes.prune.sparsity import (
    HEAD_PATTERNS,
    Masks,
    PruneReport,
    apply_masks,
    input_dim_view,
    make_report,
    mask_in_weight_shape,
    matches,
    select_layers,
    weight_of,
)
from deepopt_core.sparsity import onnx_layer_name


def _check(n: int, m: int) -> None:
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")


# ---------------------------------------------------------------------------------------------------------------
# Masks on 2-D [rows, inputs] views (torch and numpy)
# ---------------------------------------------------------------------------------------------------------------


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask of a 2-D ``[rows, inputs]`` score matrix: the N highest scores of every group of M along inputs.

    Ties are broken by position (the earlier weight is kept); a trailing shorter group keeps at most N.
    """
    _check(n, m)
    rows, length = scores.shape
    padded = -(-length // m) * m
    s = torch.nn.functional.pad(scores.float(), (0, padded - length), value=-float("inf"))
    groups = s.reshape(rows, padded // m, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(rows, padded)[:, :length]


def nm_keep_mask_np(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """:func:`nm_keep_mask` for numpy arrays."""
    return nm_keep_mask(torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)), n, m).numpy()


def nm_violations(view: torch.Tensor | np.ndarray, n: int, m: int) -> int:
    """Number of groups of M along the inputs of a 2-D ``[rows, inputs]`` weight with more than N nonzeros."""
    t = view if isinstance(view, torch.Tensor) else torch.from_numpy(np.array(view))
    rows, length = t.shape
    padded = -(-length // m) * m
    nz = torch.nn.functional.pad((t != 0).to(torch.int32), (0, padded - length))
    return int((nz.reshape(rows, padded // m, m).sum(-1) > n).sum())


@dataclass
class NMVerification:
    """Result of checking N:M sparsity: per layer, the groups over N nonzeros and the measured sparsity."""

    n: int
    m: int
    layers: dict[str, dict[str, float | int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.layers) and all(v["violations"] == 0 for v in self.layers.values())

    def as_dict(self) -> dict[str, Any]:
        return {"pattern": f"{self.n}:{self.m}", "ok": self.ok, "layers": self.layers}


# ---------------------------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------------------------


def verify_nm(model: nn.Module, n: int = 2, m: int = 4, layers: Sequence[str] | None = None) -> NMVerification:
    """Check the N:M pattern on every named layer (default: every layer that has any zero weight).

    Args:
        model: the pruned model.
        n: nonzeros allowed per group.
        m: group size.
        layers: layer names to check (default: all Linear/Conv layers with at least one zero).
    """
    found = select_layers(model, keep_head=False)
    if layers is None:
        names = [name for name, mod in found.items() if bool((weight_of(mod) == 0).any())]
    else:
        names = list(layers)
    result = NMVerification(n, m)
    with torch.no_grad():
        for name in names:
            module = found[name]
            view = input_dim_view(module, weight_of(module))
            result.layers[name] = {
                "violations": nm_violations(view, n, m),
                "groups": view.shape[0] * -(-view.shape[1] // m),
                "sparsity": round(float((view == 0).float().mean()), 6),
            }
    return result


def nm_prune(
    model: nn.Module,
    n: int = 2,
    m: int = 4,
    *,
    method: Literal["magnitude", "obs"] = "magnitude",
    hessian: Literal["fisher", "inputs"] = "fisher",
    data: Sequence[Batch] | None = None,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_head: bool = True,
    block_size: int = 32,
    num_gradients: int = 256,
    dampening: float = 1e-2,
    update: Update = "sequential",
    objective: Objective = "auto",
    output_fn: OutputFn = model_output,
    memory_mb: float = 2048.0,
    inverse: Literal["woodbury", "direct"] = "woodbury",
    fishers: Mapping[str, BlockInverseFisher] | None = None,
    fine_tune: FineTune | Mapping[str, Any] | None = None,
    train_data: Sequence[Batch] | None = None,
    seed: int = 0,
) -> PruneReport:
    """Prune every selected layer to N:M in place, by magnitude or by OBS saliency with the OBS update.

    Args:
        model: an eager module (magnitude also works on TorchScript, weights edited in place).
        n: nonzeros kept per group.
        m: group size (consecutive weights along the input dimension).
        method: ``"magnitude"`` or ``"obs"`` (needs `data`).
        hessian: OBS with the block-diagonal empirical Fisher (``"fisher"``) or each layer's input Hessian
            (``"inputs"``, :mod:`deepopt_core.passes.prune.layerwise`; the Fisher settings are then unused).
        data: calibration batches (OBS).
        targets: module names/globs to prune (None = all Linear/Conv).
        exclude: module names/globs to leave dense.
        keep_head: leave the classifier head dense.
        block_size: OBS Fisher block (a multiple of `m`).
        num_gradients: OBS gradients.
        dampening: OBS relative dampening.
        update: OBS update: ``"multi"`` (oBERT closed form per block) or ``"sequential"`` (greedy in a block
            under the N:M constraint).
        objective: OBS gradient loss (see :func:`deepopt_core.passes.prune.recovery.per_sample_loss`).
        output_fn: model output for the objective and for recovery.
        memory_mb: OBS memory budget for inverse Fishers held at once.
        inverse: OBS inverse construction.
        fishers: precomputed OBS inverse Fishers (built with ``align=m``).
        fine_tune: recovery with the N:M masks fixed.
        train_data: recovery batches (default: `data`).
        seed: seeds OBS draws.

    Returns:
        The report with ``details["verification"]`` (:func:`verify_nm` of the pruned layers) and
        ``details["keep"]`` (the masks).
    """
    _check(n, m)
    started = time.perf_counter()
    layers = select_layers(model, targets, exclude, keep_head=keep_head)
    if not layers:
        raise ValueError("no prunable layers selected")
    spec = FineTune.from_config(fine_tune)
    teacher = snapshot(model) if spec is not None and spec.epochs > 0 and spec.method != "task" else None
    view_keep: dict[str, torch.Tensor] = {}
    by_magnitude: dict[str, str] = {}  # layers OBS cannot take: N:M chosen by magnitude instead, with the reason
    if method == "magnitude":
        with torch.no_grad():
            for name, module in layers.items():
                keep = nm_keep_mask(input_dim_view(module, weight_of(module)).abs(), n, m)
                view_keep[name] = keep
    elif hessian == "inputs":
        if not data:
            raise ValueError("N:M with OBS needs calibration data")
        from deepopt_core.passes.prune.layerwise import layerwise_obs_prune

        inner = layerwise_obs_prune(model, (m - n) / m, data=data, dampening=dampening, nm=(n, m),
                                    output_fn=output_fn, targets=list(layers), keep_head=False)
        by_magnitude.update(inner.details.get("dense_layers") or {})
        for name, module in layers.items():  # a layer the forward never called or OBS cannot take: by magnitude
            view = input_dim_view(module, weight_of(module)).detach()
            kept = inner.details["keep"].get(name)
            view_keep[name] = input_dim_view(module, kept) if kept is not None else nm_keep_mask(view.abs(), n, m)
    else:
        if data is None and fishers is None:
            raise ValueError("N:M with OBS needs calibration data")
        if block_size % m:
            block_size = max(m, block_size // m * m)
        obs_layers, by_magnitude = split_supported(layers)
        with torch.no_grad():
            for name in by_magnitude:
                view_keep[name] = nm_keep_mask(input_dim_view(layers[name], weight_of(layers[name])).abs(), n, m)
        groups = [list(obs_layers)] if fishers is not None else plan_groups(obs_layers, block_size, memory_mb,
                                                                            align=m)
        for names in groups:
            group = ({k: fishers[k] for k in names} if fishers is not None else compute_inverse_fishers(
                model, {k: layers[k] for k in names}, data or [], block_size=block_size, num_gradients=num_gradients,
                dampening=dampening, objective=objective, output_fn=output_fn, align=m, method=inverse, seed=seed))
            for name in names:
                module, fisher = layers[name], group[name]
                layout = fisher.layout
                if layout.padded_row % m or layout.block % m:
                    raise ValueError(f"{name}: the inverse Fisher's blocks do not align with groups of {m}")
                view = input_dim_view(module, weight_of(module)).detach().float()
                scores = layout.from_blocks(saliency(layout.to_blocks(view), fisher.finalize()))
                keep = nm_keep_mask(scores, n, m)
                prune_layer_obs(module, fisher, keep, update, group=m, group_prune=m - n)
                view_keep[name] = keep
    masks: Masks = {name: mask_in_weight_shape(layers[name], keep) for name, keep in view_keep.items()}
    apply_masks(layers, masks)
    recovery: dict[str, Any] = {}
    if spec is not None and spec.epochs > 0:
        recovery = recover(model, train_data if train_data is not None else (data or []), spec, teacher=teacher,
                           masks=masks, layers=layers, output_fn=output_fn)
    verification = verify_nm(model, n, m, list(layers))
    report = make_report("nm", model, layers, (m - n) / m, time.perf_counter() - started, pattern=f"{n}:{m}",
                         selection=method, hessian=hessian if method == "obs" else None,
                         verification=verification.as_dict(), recovery=recovery,
                         **({"by_magnitude": by_magnitude} if method == "obs" else {}))
    report.details["keep"] = masks
    return report


# ---------------------------------------------------------------------------------------------------------------
# ONNX (numpy)
# ---------------------------------------------------------------------------------------------------------------

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def onnx_input_view(ref: WeightRef, array: np.ndarray) -> np.ndarray:
    """The weight as ``[outputs, inputs]``: MatMul ``[in, out]`` and Gemm without transB are transposed, Gemm with
    ``transB=1`` is already ``[out, in]``, Conv ``[out, in, *k]`` is flattened to ``[out, in * prod(k)]``."""
    if ref.op_type == "MatMul" or (ref.op_type == "Gemm" and not ref.transposed):
        return array.T
    return array.reshape(array.shape[0], -1)


def _from_view(ref: WeightRef, view: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if ref.op_type == "MatMul" or (ref.op_type == "Gemm" and not ref.transposed):
        return np.ascontiguousarray(view.T)
    return view.reshape(shape)


def onnx_head_layers(model: onnx.ModelProto) -> set[str]:
    """ONNX classifier heads: layers named like :data:`HEAD_PATTERNS`, else the last MatMul/Gemm whose output
    reaches a graph output through bias Adds / Softmax / Identity / Reshape only."""
    refs = [r for r in weight_refs(model) if r.zero_point is None]
    named = {onnx_layer_name(r) for r in refs if matches(onnx_layer_name(r), HEAD_PATTERNS)}
    if named:
        return named
    graph = model.graph
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {t.name for t in graph.initializer}
    by_name = {(node.name or f"{node.op_type}_{i}"): node for i, node in enumerate(graph.node)}
    for ref in reversed(refs):
        node = by_name.get(ref.node)
        if node is None or ref.op_type not in ("MatMul", "Gemm"):
            continue
        tensor = node.output[0]
        for _ in range(8):
            if tensor in outputs:
                return {onnx_layer_name(ref)}
            users = consumers.get(tensor, [])
            if len(users) != 1:
                break
            user = users[0]
            passthrough = user.op_type in ("Softmax", "Identity", "Reshape", "Flatten", "LogSoftmax")
            bias_add = user.op_type == "Add" and any(i in inits for i in user.input if i != tensor)
            if not (passthrough or bias_add):
                break
            tensor = user.output[0]
        return set()
    return set()


def _select_onnx(model: onnx.ModelProto, targets: Sequence[str] | None, exclude: Sequence[str],
                 keep_head: bool) -> list[WeightRef]:
    inits = {t.name: t for t in model.graph.initializer}
    heads = onnx_head_layers(model) if keep_head else set()
    picked = []
    for ref in weight_refs(model):
        if ref.zero_point is not None or ref.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        if inits[ref.name].data_type not in _FLOATS:
            continue
        names = (onnx_layer_name(ref), ref.node, ref.name)
        if targets is not None and not any(matches(x, targets) for x in names):
            continue
        if any(matches(x, exclude) for x in names) or names[0] in heads:
            continue
        if ref.op_type == "MatMul" and len(inits[ref.name].dims) != 2:
            continue
        picked.append(ref)
    return picked


def nm_prune_onnx(
    model: onnx.ModelProto,
    n: int = 2,
    m: int = 4,
    *,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_head: bool = True,
) -> tuple[onnx.ModelProto, NMVerification]:
    """N:M magnitude pruning of the float MatMul/Gemm/Conv weight initializers of an ONNX model (a copy).

    Args:
        model: the model (not modified).
        n: nonzeros kept per group of `m` along each weight's input dimension.
        m: group size.
        targets: layer/node/initializer names or globs to prune (None = all).
        exclude: names or globs to leave dense.
        keep_head: leave the classifier head dense (see :func:`onnx_head_layers`).

    Returns:
        (pruned copy, verification of the pruned layers).
    """
    _check(n, m)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    refs = _select_onnx(out, targets, exclude, keep_head)
    for ref in refs:
        array = numpy_helper.to_array(inits[ref.name])
        view = onnx_input_view(ref, array)
        keep = nm_keep_mask_np(np.abs(view.astype(np.float32)), n, m)
        pruned = _from_view(ref, np.where(keep, view, 0).astype(array.dtype), array.shape)
        inits[ref.name].CopyFrom(numpy_helper.from_array(pruned, ref.name))
    return out, verify_nm_onnx(out, n, m, [onnx_layer_name(r) for r in refs])


def verify_nm_onnx(model: onnx.ModelProto, n: int = 2, m: int = 4,
                   layers: Sequence[str] | None = None) -> NMVerification:
    """Check N:M along the input dimension of ONNX weights (default: every float MatMul/Gemm/Conv weight with
    a zero); `layers` are layer names as :func:`deepopt_core.sparsity.onnx_layer_name` gives them."""
    inits = {t.name: t for t in model.graph.initializer}
    result = NMVerification(n, m)
    for ref in weight_refs(model):
        if ref.name not in inits or inits[ref.name].data_type not in _FLOATS or ref.zero_point is not None:
            continue
        name = onnx_layer_name(ref)
        if layers is not None and name not in layers:
            continue
        view = onnx_input_view(ref, numpy_helper.to_array(inits[ref.name]))
        if layers is None and not (view == 0).any():
            continue
        result.layers[name] = {
            "violations": nm_violations(view, n, m),
            "groups": view.shape[0] * -(-view.shape[1] // m),
            "sparsity": round(float((view == 0).mean()), 6),
        }
    return result
