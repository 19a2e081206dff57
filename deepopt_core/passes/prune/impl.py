"""Unstructured magnitude pruning (Han et al., 2015) of MatMul/Gemm/Conv (ONNX) or Linear/Conv (PyTorch) weights.

The `sparsity` fraction of the chosen weights with the smallest magnitudes is set to zero: ranked over all
layers together (``scope="global"``) or within each layer (``"layer"``). Exactly ``round(sparsity * n)`` weights
are zeroed per ranking group, ties broken by position. Biases, embeddings (weights read by Gather) and layers in
``exclude`` stay dense. Decisions record the measured sparsity per layer (:mod:`deepopt_core.sparsity`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from deepopt_core.errors import PassFailed
from deepopt_core.formats.onnx_inspect import weight_refs
from deepopt_core.passes.context import PassContext
from deepopt_core.passes.prune.config import MagnitudePruneConfig
from deepopt_core.sparsity import onnx_layer_name, onnx_sparsity, torch_sparsity

log = logging.getLogger("deepopt.passes.prune")


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the `k` smallest `values` (exactly k; stable among ties)."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= values.size:
        return np.arange(values.size)
    return np.argpartition(values, k - 1, kind="introselect")[:k]


def select_masks(weights: dict[str, np.ndarray], sparsity: float, scope: str) -> dict[str, np.ndarray]:
    """Boolean keep-masks (True = keep) zeroing the smallest-magnitude fraction `sparsity` of the weights."""
    masks = {name: np.ones(w.shape, dtype=bool) for name, w in weights.items()}
    if scope == "layer":
        for name, weight in weights.items():
            flat = masks[name].reshape(-1)
            flat[_smallest(np.abs(weight).reshape(-1), int(round(sparsity * weight.size)))] = False
        return masks
    names = list(weights)
    sizes = [weights[n].size for n in names]
    magnitudes = np.concatenate([np.abs(weights[n]).reshape(-1).astype(np.float32) for n in names])
    chosen = _smallest(magnitudes, int(round(sparsity * magnitudes.size)))
    keep = np.ones(magnitudes.size, dtype=bool)
    keep[chosen] = False
    offset = 0
    for name, size in zip(names, sizes, strict=True):
        masks[name] = keep[offset: offset + size].reshape(weights[name].shape)
        offset += size
    return masks


def _matches(exclude: set[str], *names: str) -> bool:
    return any(name in exclude for name in names)


def _record(ctx: PassContext, spec: MagnitudePruneConfig, report: Any, excluded: list[str],
            unmatched: list[str]) -> None:
    ctx.decisions.update({
        "method": "magnitude",
        "scope": spec.scope,
        "target_sparsity": spec.sparsity,
        "sparsity": round(report.sparsity, 6),
        "layers": report.layers,
        "excluded": excluded,
    })
    if unmatched:
        ctx.warn(f"prune: exclude names {unmatched} match no prunable layer")


def apply_onnx(spec: MagnitudePruneConfig, model: onnx.ModelProto | str | Path, ctx: PassContext) -> onnx.ModelProto:
    """Prune the float MatMul/Gemm/Conv weight initializers of an ONNX model (a copy is returned)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    inits = {t.name: t for t in pruned.graph.initializer}
    exclude = set(spec.exclude)
    candidates: dict[str, np.ndarray] = {}
    excluded: list[str] = []
    matched: set[str] = set()
    for ref in weight_refs(pruned):
        tensor = inits[ref.name]
        if ref.zero_point is not None or ref.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        if tensor.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
            continue
        layer = onnx_layer_name(ref)
        if _matches(exclude, layer, ref.node, ref.name):
            excluded.append(layer)
            matched.update({layer, ref.node, ref.name} & exclude)
            continue
        candidates[ref.name] = numpy_helper.to_array(tensor)
    if not candidates:
        raise PassFailed("prune: the model has no float MatMul/Gemm/Conv weights to prune (prune before quantize)")
    masks = select_masks(candidates, spec.sparsity, spec.scope)
    for index, (name, weight) in enumerate(candidates.items()):
        inits[name].CopyFrom(numpy_helper.from_array(np.where(masks[name], weight, 0).astype(weight.dtype), name))
        ctx.progress((index + 1) / len(candidates))
    _record(ctx, spec, onnx_sparsity(pruned), excluded, sorted(exclude - matched))
    return pruned


def apply_torch(spec: MagnitudePruneConfig, model: Any, ctx: PassContext) -> Any:
    """Prune Linear/Conv weights of a torch module in place (ScriptModule, export GraphModule or HF model)."""
    import torch

    from deepopt_core.formats.torch_common import prunable_params

    exclude = set(spec.exclude)
    params = prunable_params(model)
    candidates = {name: w for name, w in params.items() if name not in exclude}
    excluded = sorted(set(params) - set(candidates))
    if not candidates:
        raise PassFailed("prune: the model has no float Linear/Conv weights to prune (prune before quantize)")
    with torch.no_grad():
        arrays = {name: w.detach().float().cpu().numpy() for name, w in candidates.items()}
        masks = select_masks(arrays, spec.sparsity, spec.scope)
        for index, (name, weight) in enumerate(candidates.items()):
            weight.mul_(torch.from_numpy(masks[name]).to(weight.device, weight.dtype))
            ctx.progress((index + 1) / len(candidates))
    _record(ctx, spec, torch_sparsity(model), excluded, sorted(exclude - set(params)))
    return model
