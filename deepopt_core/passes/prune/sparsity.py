"""Shared helpers of the pruning methods: layer selection, masks, the cubic schedule, measured sparsity, and
compact storage of a pruned ONNX model.

Layer selection (:func:`select_layers`) is the one place that decides which weights a method may touch:
Linear / Conv1d / Conv2d / Conv3d (and Hugging Face's ``Conv1D``) layers, filtered by ``targets`` and ``exclude``
(module names or :mod:`fnmatch` globs; a name also covers the modules under it). Embeddings are never selected
(they are not Linear/Conv; a Linear whose weight is tied to an embedding is skipped too) and the classifier head is
left alone unless ``keep_head=False``.

Papers: the cubic schedule is from Zhu & Gupta, 2017, "To prune, or not to prune",
https://arxiv.org/abs/1710.01878.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from deepopt_core.formats.onnx_sparse import compact_onnx, densify_onnx
from deepopt_core.formats.torch_common import kind_of, unwrap
from deepopt_core.sparsity import SparsityReport, onnx_sparsity

Masks = dict[str, torch.Tensor]
"""Keep-masks by layer name: a bool tensor shaped like the layer's weight, True where the weight is kept."""

PRUNABLE_KINDS = ("Linear", "NonDynamicallyQuantizableLinear", "Conv1d", "Conv2d", "Conv3d", "Conv1D")

HEAD_PATTERNS = (
    "classifier", "*.classifier", "lm_head", "*.lm_head", "qa_outputs", "*.qa_outputs", "score", "*.score",
    "head", "*.head", "*pooler*", "cls", "*.cls",
)  # fmt: skip
"""Names of classifier heads (and Hugging Face poolers) that stay dense by default."""


# ---------------------------------------------------------------------------------------------------------------
# Layer selection
# ---------------------------------------------------------------------------------------------------------------


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module name matches one of `patterns`: equal, a glob match, or a module under a named one."""
    for pattern in patterns:
        if name == pattern or fnmatchcase(name, pattern) or name.startswith(pattern + "."):
            return True
        if fnmatchcase(name, pattern + ".*"):
            return True
    return False


def _all_prunable(root: nn.Module) -> dict[str, nn.Module]:
    tied: set[int] = {id(m.weight) for m in root.modules() if isinstance(m, nn.Embedding)}
    found: dict[str, nn.Module] = {}
    for name, module in root.named_modules():
        if not name or kind_of(module) not in PRUNABLE_KINDS:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() < 2:
            continue
        if id(weight) in tied:
            continue
        found[name] = module
    return found


def head_layers(model: nn.Module) -> set[str]:
    """Names of the classifier head layers: those matching :data:`HEAD_PATTERNS`, else the last Linear/Conv.

    Args:
        model: the model (a Hugging Face wrapper is unwrapped).
    """
    layers = _all_prunable(unwrap(model))
    named = {name for name in layers if matches(name, HEAD_PATTERNS)}
    if named:
        return named
    return {list(layers)[-1]} if layers else set()


def select_layers(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    *,
    keep_head: bool = True,
) -> dict[str, nn.Module]:
    """The layers a pruning method may prune, by qualified name (relative to an unwrapped Hugging Face model).

    Args:
        model: an eager ``nn.Module`` (or a Hugging Face wrapper of the pipeline).
        targets: module names or globs to prune (None: every Linear/Conv layer).
        exclude: module names or globs to leave dense (applied after `targets`).
        keep_head: leave the classifier head (see :func:`head_layers`) dense.

    Returns:
        Name -> module, in registration order.
    """
    layers = _all_prunable(unwrap(model))
    heads = head_layers(model) if keep_head else set()
    out: dict[str, nn.Module] = {}
    for name, module in layers.items():
        if targets is not None and not matches(name, targets):
            continue
        if matches(name, exclude) or name in heads:
            continue
        out[name] = module
    return out


def unmatched_patterns(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Patterns of `targets`/`exclude` that match no module of `model` (to warn about typos)."""
    names = [name for name, _ in unwrap(model).named_modules() if name]
    return [p for p in patterns if not any(matches(n, [p]) for n in names)]


def weight_of(module: nn.Module) -> torch.Tensor:
    """The ``weight`` tensor of a layer."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def input_dim_view(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight as a 2-D [outputs, inputs] view (a transpose for Hugging Face's ``Conv1D``, stored [in, out]).

    Conv weights [out, in, *kernel] become [out, in * prod(kernel)]: the input dimension is in-channels x kernel.
    """
    if kind_of(module) == "Conv1D":
        return weight.t()
    return weight.reshape(weight.shape[0], -1)


def mask_in_weight_shape(module: nn.Module, view_keep: torch.Tensor) -> torch.Tensor:
    """A keep-mask of the 2-D view (:func:`input_dim_view`) back in the weight's own shape."""
    if kind_of(module) == "Conv1D":
        return view_keep.t().contiguous()
    return view_keep.reshape(weight_of(module).shape)


def conv_columns(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """A Conv1d/Conv2d input unfolded to ``[batch, in * prod(kernel), positions]``: each column is what one output
    position multiplies with the weight's 2-D view (:func:`input_dim_view`)."""
    conv: Any = module
    if kind_of(module) == "Conv1d":
        inp = inp.unsqueeze(2)
        kernel, dilation = (1, conv.kernel_size[0]), (1, conv.dilation[0])
        padding, stride = (0, conv.padding[0]), (1, conv.stride[0])
    else:
        kernel, dilation, padding, stride = conv.kernel_size, conv.dilation, conv.padding, conv.stride
    return F.unfold(inp, kernel, dilation=dilation, padding=padding, stride=stride)


# ---------------------------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------------------------


def apply_masks(layers: Mapping[str, nn.Module], masks: Masks) -> None:
    """Zero the pruned weights (where the mask is False) of each masked layer, in place."""
    with torch.no_grad():
        for name, mask in masks.items():
            weight = weight_of(layers[name])
            weight.mul_(mask.to(weight.device, weight.dtype))


def masks_from_zeros(layers: Mapping[str, nn.Module]) -> Masks:
    """Keep-masks of the weights that are not exactly zero."""
    return {name: weight_of(layer).detach() != 0 for name, layer in layers.items()}


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= values.size:
        return np.arange(values.size)
    return np.argpartition(values, k - 1, kind="introselect")[:k]


def lowest_score_masks(scores: Mapping[str, torch.Tensor], sparsity: float, scope: Literal["global", "layer"]) -> Masks:
    """Keep-masks that drop exactly ``round(sparsity * n)`` lowest-score elements per ranking group.

    Args:
        scores: a score per weight (higher = more important), by layer name; ``inf`` is never dropped.
        sparsity: fraction to drop, in [0, 1).
        scope: ``"global"`` ranks all layers together, ``"layer"`` each layer on its own.
    """
    arrays = {n: s.detach().float().cpu().numpy() for n, s in scores.items()}
    masks: Masks = {}
    if scope == "layer":
        for name, score in arrays.items():
            keep = np.ones(score.size, dtype=bool)
            keep[_smallest(score.reshape(-1), int(round(sparsity * score.size)))] = False
            masks[name] = torch.from_numpy(keep.reshape(score.shape))
        return masks
    flat = np.concatenate([a.reshape(-1) for a in arrays.values()]) if arrays else np.empty(0, np.float32)
    keep = np.ones(flat.size, dtype=bool)
    keep[_smallest(flat, int(round(sparsity * flat.size)))] = False
    offset = 0
    for name, score in arrays.items():
        masks[name] = torch.from_numpy(keep[offset : offset + score.size].reshape(score.shape).copy())
        offset += score.size
    return masks


def magnitude_masks(
    layers: Mapping[str, nn.Module], sparsity: float, scope: Literal["global", "layer"] = "global"
) -> Masks:
    """Keep-masks zeroing the smallest-magnitude fraction `sparsity` of the layers' weights (Han et al., 2015).

    Already-zero weights rank lowest, so masks only grow when called again at a higher sparsity.
    Paper: https://arxiv.org/abs/1506.02626
    """
    return lowest_score_masks({n: weight_of(m).detach().abs() for n, m in layers.items()}, sparsity, scope)


# ---------------------------------------------------------------------------------------------------------------
# Cubic schedule (Zhu & Gupta, 2017)
# ---------------------------------------------------------------------------------------------------------------


def cubic_sparsity(step: int, steps: int, final: float, initial: float = 0.0) -> float:
    """Sparsity after pruning step `step` of `steps` (1-based): ``s_f + (s_i - s_f) * (1 - step / steps) ** 3``.

    Zhu & Gupta, 2017, Eq. 1, https://arxiv.org/abs/1710.01878; step `steps` reaches `final` exactly.
    """
    if steps <= 0:
        raise ValueError("steps must be >= 1")
    t = min(max(step, 0), steps) / steps
    return final + (initial - final) * (1.0 - t) ** 3


def cubic_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """The sparsity targets of steps 1..`steps` of the cubic schedule (increasing, last = `final`)."""
    return [cubic_sparsity(k, steps, final, initial) for k in range(1, steps + 1)]


# ---------------------------------------------------------------------------------------------------------------
# Measured sparsity and reports
# ---------------------------------------------------------------------------------------------------------------


def measured_sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> SparsityReport:
    """Zeros among the weights of `layers` (default: every Linear/Conv layer), overall and per layer."""
    found = _all_prunable(unwrap(model))
    names = list(found) if layers is None else [n for n in layers if n in found]
    report = SparsityReport()
    with torch.no_grad():
        for name in names:
            weight = weight_of(found[name])
            report.add(name, int((weight == 0).sum()), weight.numel())
    return report


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in unwrap(model).parameters())


@dataclass
class PruneReport:
    """What a pruning method did: measured sparsity per layer, timings, and method-specific details."""

    method: str
    target_sparsity: float | None
    sparsity: float
    layers: dict[str, float]
    seconds: float = 0.0
    steps: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the pass decisions)."""
        return {
            "method": self.method,
            "target_sparsity": self.target_sparsity,
            "sparsity": round(self.sparsity, 6),
            "layers": self.layers,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
            **self.details,
        }


def make_report(method: str, model: nn.Module, layers: Iterable[str], target: float | None, seconds: float,
                **details: Any) -> PruneReport:
    """A :class:`PruneReport` with the sparsity measured on `model`'s `layers`."""
    measured = measured_sparsity(model, layers)
    return PruneReport(method, target, measured.sparsity, measured.layers, seconds, details=details)


# ---------------------------------------------------------------------------------------------------------------
# ONNX: measured sparsity and compact storage
# ---------------------------------------------------------------------------------------------------------------


def onnx_measured_sparsity(model: onnx.ModelProto) -> SparsityReport:
    """Sparsity of the MatMul/Gemm/Conv weights of an ONNX model, per layer and overall (sparse initializers too)."""
    return onnx_sparsity(densify_onnx(model) if len(model.graph.sparse_initializer) else model)


@dataclass
class CompactReport:
    """Sizes of a pruned ONNX model stored compactly."""

    dense_bytes: int
    sparse_bytes: int
    written_bytes: int
    path: str
    sparse_initializers: list[str] = field(default_factory=list)
    archive: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def save_compact_onnx(
    model: onnx.ModelProto,
    path: str | Path,
    *,
    archive: bool = False,
    index_dtype: Literal["int64", "smallest"] = "int64",
) -> CompactReport:
    """Write a pruned ONNX model as small as it runs: sparse initializers where smaller, optionally a zip too.

    Args:
        model: the pruned model.
        path: the ``.onnx`` file to write (loads in ONNX Runtime as is).
        archive: also write ``<path>.zip`` (deflate, the smaller of the compact and the dense model inside,
            named ``model.onnx``) for download; its size is ``written_bytes`` then.
        index_dtype: see :func:`compact_onnx`.

    Returns:
        The sizes (dense serialization, compact serialization, bytes written).
    """
    path = Path(path)
    dense_blob = model.SerializeToString()
    compact, moved = compact_onnx(model, index_dtype=index_dtype)
    blob = compact.SerializeToString() if moved else dense_blob
    path.write_bytes(blob)
    report = CompactReport(len(dense_blob), len(blob), len(blob), str(path), moved)
    if archive:
        best = b""
        for candidate in {blob, dense_blob}:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
                zf.writestr("model.onnx", candidate)
            if not best or len(buffer.getvalue()) < len(best):
                best = buffer.getvalue()
        zip_path = path.with_name(path.name + ".zip")
        zip_path.write_bytes(best)
        report.archive = str(zip_path)
        report.written_bytes = len(best)
    return report
