"""The `prune` pass: dispatch of each method (magnitude, obs, nm, structured) on ONNX and PyTorch models.

One-shot magnitude pruning (Han et al., 2015) is implemented here: the `sparsity` fraction of the chosen weights
with the smallest magnitudes is set to zero, ranked over all layers together (``scope="global"``) or within each
layer (``"layer"``); exactly ``round(sparsity * n)`` weights are zeroed per ranking group, ties broken by position.
Biases, embeddings (weights read by Gather) and layers in ``exclude`` stay dense. The other methods (gradual
magnitude, OBS, N:M, structured) live in their own modules of this package and run on eager torch modules: a
Hugging Face model, a ``torch.export`` program lifted to Linear/Conv modules, or (magnitude, N:M by magnitude) a
TorchScript module whose weights are edited in place. N:M by magnitude also runs on ONNX graphs directly.

Decisions record the measured sparsity per layer and overall (:mod:`deepopt_core.sparsity`), the time the method
took, and for structured pruning the parameter counts before and after.
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
from deepopt_core.passes.prune.config import MagnitudePruneConfig, NMPruneConfig
from deepopt_core.sparsity import onnx_layer_name, onnx_sparsity, torch_sparsity

log = logging.getLogger("deepopt.passes.prune")
# A job with PyTorch and ONNX outputs prunes its torch model once (OBS, structured and fine-tuning are costly, and
# every output then holds the same weights); the pipeline hands the other track a copy.
REUSE_ACROSS_TRACKS = True


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


def _selected(targets: list[str] | None, *names: str) -> bool:
    from deepopt_core.passes.prune.sparsity import matches

    return targets is None or any(matches(name, targets) for name in names)


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


def apply_onnx(spec: Any, model: onnx.ModelProto | str | Path, ctx: PassContext) -> onnx.ModelProto:
    """Prune the float MatMul/Gemm/Conv weight initializers of an ONNX model (a copy is returned).

    Raises:
        PassFailed: nothing to prune, or a method that needs a PyTorch model (the planner prevents that).
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if isinstance(spec, NMPruneConfig):
        return _nm_onnx(spec, model, ctx)
    if not isinstance(spec, MagnitudePruneConfig) or spec.schedule is not None or spec.fine_tune is not None:
        raise PassFailed(f"prune method {spec.method!r} with these settings needs a PyTorch model")
    return _magnitude_onnx(spec, model, ctx)


def _nm_onnx(spec: NMPruneConfig, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    import time

    from deepopt_core.passes.prune.nm import nm_prune_onnx

    started = time.perf_counter()
    pruned, verification = nm_prune_onnx(model, spec.n, spec.m, targets=spec.targets, exclude=spec.exclude,
                                         keep_head=spec.keep_head)
    if not verification.layers:
        raise PassFailed("prune: the model has no float MatMul/Gemm/Conv weights to prune (prune before quantize)")
    if not verification.ok:
        raise PassFailed(f"prune: the {spec.n}:{spec.m} pattern check failed: {verification.as_dict()}")
    measured = onnx_sparsity(pruned)
    ctx.decisions.update({
        "method": "nm", "pattern": f"{spec.n}:{spec.m}", "selection": "magnitude",
        "target_sparsity": round((spec.m - spec.n) / spec.m, 6), "sparsity": round(measured.sparsity, 6),
        "layers": measured.layers, "pruned_layers": sorted(verification.layers),
        "verification": verification.as_dict(), "seconds": round(time.perf_counter() - started, 3),
        "storage": _storage(pruned),
    })  # fmt: skip
    ctx.progress(1.0)
    return pruned


def _storage(model: onnx.ModelProto) -> dict[str, Any]:
    """What the zeros could save on disk: the graph's bytes dense, with sparse initializers where those are smaller
    (:func:`deepopt_core.formats.onnx_sparse.compact_onnx`, as the artifact is then written), and
    deflate-compressed."""
    import zlib

    from deepopt_core.formats.onnx_sparse import compact_onnx

    compact, moved = compact_onnx(model)
    blob = model.SerializeToString()
    return {"dense_bytes": len(blob), "sparse_initializer_bytes": compact.ByteSize() if moved else len(blob),
            "sparse_initializers": len(moved), "deflate_bytes": len(zlib.compress(blob, 6))}


def _magnitude_onnx(spec: MagnitudePruneConfig, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    inits = {t.name: t for t in pruned.graph.initializer}
    exclude = set(spec.exclude)
    heads = _onnx_heads(pruned, spec.keep_head)
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
        if not _selected(spec.targets, layer, ref.node, ref.name) or (layer in heads and spec.targets is None):
            continue
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
    ctx.decisions["storage"] = _storage(pruned)
    return pruned


def _onnx_heads(model: onnx.ModelProto, keep_head: bool) -> set[str]:
    if not keep_head:
        return set()
    from deepopt_core.passes.prune.nm import onnx_head_layers

    return onnx_head_layers(model)


def apply_torch(spec: Any, model: Any, ctx: PassContext) -> Any:
    """Prune a torch module (ScriptModule, export GraphModule or HF wrapper) with `spec.method`; returns it.

    Raises:
        PassFailed: nothing to prune, a quantized model, or a method the module cannot take.
    """
    if isinstance(spec, MagnitudePruneConfig) and spec.schedule is None and spec.fine_tune is None:
        return _magnitude_torch(spec, model, ctx)
    from deepopt_core.passes.prune.torch_methods import apply_method

    return apply_method(spec, model, ctx)


def _magnitude_torch(spec: MagnitudePruneConfig, model: Any, ctx: PassContext) -> Any:
    """One-shot magnitude pruning of Linear/Conv weights in place (works on every torch format)."""
    import torch

    from deepopt_core.formats.torch_common import prunable_params
    from deepopt_core.passes.prune.sparsity import HEAD_PATTERNS, matches

    exclude = set(spec.exclude)
    params = prunable_params(model)
    heads: set[str] = set()
    if spec.keep_head and spec.targets is None and params:
        heads = {n for n in params if matches(n, HEAD_PATTERNS)} or {list(params)[-1]}
    params = {n: w for n, w in params.items() if _selected(spec.targets, n) and n not in heads}
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
