"""Structured pruning: remove whole units and rebuild smaller dense layers, so parameters and latency really drop.

Units and what removing one rebuilds:

* ``neurons``: an output feature of a Linear followed (through element-wise ops) by another Linear: a row of the
  first, a column of the second;
* ``channels``: an output channel of a Conv (groups=1), with its BatchNorm entries, followed by a Conv's input
  channel or, through ``Flatten``, a Linear's block of input features; depthwise convs on the way (a MobileNet
  block's expansion, groups = channels) lose the same channels' filters, with their BatchNorm entries;
* ``heads``: an attention head of a Hugging Face BERT-family layer (``attention.self.query/key/value`` rows,
  ``attention.output.dense`` columns) or of ``nn.TransformerEncoderLayer`` (its ``nn.MultiheadAttention`` is
  replaced by the equivalent :class:`PrunedMultiheadAttention`, whose heads can be removed);
* ``ffn``: an intermediate neuron of a transformer feed-forward block (``intermediate.dense`` / ``output.dense``,
  or ``linear1`` / ``linear2``).

Which Linear/Conv rows and columns, norms and depthwise filters share a unit is read off the traced graph
(:mod:`deepopt_core.passes.prune.graph_units`): a residual add joins the channels of the convs that add into it,
so a ResNet's stream shrinks together with every conv that reads it; a space that anything not understood reads
(a reshape, a concat, a LayerNorm, the output) is left whole.

Importance of a unit (``importance``):

* ``"magnitude"``: L1 or L2 norm of all weights removed with it (Li et al., 2017, https://arxiv.org/abs/1608.08710);
* ``"taylor"``: first-order Taylor, ``sum |w * dL/dw|`` over those weights, accumulated batch by batch (Molchanov
  et al., 2017/2019, https://arxiv.org/abs/1611.06440, https://arxiv.org/abs/1906.10771);
* ``"fisher"``: second-order, the Fisher diagonal of a mask variable on the unit, ``sum_i (dL_i/dm)^2`` over
  samples (Theis et al., 2018, https://arxiv.org/abs/1801.05787; Kwon et al., 2022,
  https://arxiv.org/abs/2204.09656), which estimates the loss increase of removing the unit.

Without labels, the loss is the Gaussian output objective (the squared change of the output, see
:func:`deepopt_core.passes.prune.recovery.per_sample_loss`). After removal, ``reconstruct=True`` refits each Linear
consumer by ridge least squares so that it reproduces the unpruned model's output of that layer on calibration data
(the layer-wise reconstruction of Kwon et al., 2022), and ``fine_tune`` recovers by task fine-tuning or by
distillation against the unpruned model (logits KL / output MSE / cosine, plus optional hidden-state MSE).

Hugging Face models keep a consistent config: ``intermediate_size`` is updated when all layers keep the same number
of FFN neurons, and ``config.deepopt_pruned_shapes`` records heads and FFN sizes per layer; :func:`load_pruned_bert`
(or :func:`restore_pruned_shapes` on a model built from that config) reloads a saved pruned model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from deepopt_core.formats.torch_common import unwrap
from deepopt_core.passes.prune.graph_units import CONV as _CONV
from deepopt_core.passes.prune.graph_units import UnitGroup, example_inputs, module_groups
from deepopt_core.passes.prune.graph_units import get_module as _get
from deepopt_core.passes.prune.layouts import FFN_LAYOUTS, FFNLayout
from deepopt_core.passes.prune.recovery import (
    LABELS,
    Batch,
    FineTune,
    Objective,
    OutputFn,
    model_output,
    per_sample_loss,
    recover,
    snapshot,
)
from deepopt_core.passes.prune.sparsity import count_parameters, head_layers, matches

log = logging.getLogger("deepopt.passes.prune")

Importance = Literal["magnitude", "taylor", "fisher"]
UNIT_KINDS: tuple[str, ...] = ("neurons", "channels", "heads", "ffn")


# ---------------------------------------------------------------------------------------------------------------
# Multi-head attention whose heads can be removed
# ---------------------------------------------------------------------------------------------------------------


class PrunedMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` as used by ``nn.TransformerEncoderLayer``, with separate q/k/v
    projections so that heads can be removed (``num_heads * head_dim`` may differ from ``embed_dim``).

    ``in_proj_bias`` is None and ``_qkv_same_embed_dim`` False, so the encoder layer takes its regular (non fused)
    path and calls this module.
    """

    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, dropout: float = 0.0,
                 batch_first: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        """The same function as `mha` (no bias_k/bias_v, no add_zero_attn, kdim = vdim = embed_dim)."""
        if mha.bias_k is not None or mha.add_zero_attn or not mha._qkv_same_embed_dim:
            raise TypeError("only self-attention MultiheadAttention without bias_k/add_zero_attn is supported")
        e = mha.embed_dim
        out = cls(e, mha.num_heads, mha.head_dim, dropout=mha.dropout, batch_first=mha.batch_first,
                  bias=mha.in_proj_bias is not None)
        out.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        with torch.no_grad():
            for i, proj in enumerate((out.q_proj, out.k_proj, out.v_proj)):
                proj.weight.copy_(mha.in_proj_weight[i * e : (i + 1) * e])
                if mha.in_proj_bias is not None:
                    proj.bias.copy_(mha.in_proj_bias[i * e : (i + 1) * e])
            out.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                out.out_proj.bias.copy_(mha.out_proj.bias)
        return out

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, s, _ = query.shape
        heads = self.q_proj.out_features // self.head_dim

        def split(x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, x.shape[1], heads, self.head_dim).transpose(1, 2)

        q, k, v = split(query, self.q_proj), split(key, self.k_proj), split(value, self.v_proj)
        mask = None
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dtype != torch.bool else torch.zeros(
                attn_mask.shape, dtype=q.dtype).masked_fill(attn_mask, -math.inf)
            mask = mask.view(-1, heads if mask.dim() == 3 and mask.shape[0] != 1 else 1, *mask.shape[-2:]) \
                if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            pad = key_padding_mask if key_padding_mask.dtype != torch.bool else torch.zeros(
                key_padding_mask.shape, dtype=q.dtype).masked_fill(key_padding_mask, -math.inf)
            pad = pad.view(b, 1, 1, -1)
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training
                                             else 0.0, is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(b, s, heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


# ---------------------------------------------------------------------------------------------------------------
# Unit groups
# ---------------------------------------------------------------------------------------------------------------


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(_get(root, parent) if parent else root, child, new)


def bert_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """BERT-family transformer layers (``attention.self.query``, ``attention.output.dense``,
    ``intermediate.dense``, ``output.dense``) by name, in order."""
    found = []
    for name, module in root.named_modules():
        attention = getattr(module, "attention", None)
        self_att = getattr(attention, "self", None)
        if (isinstance(getattr(self_att, "query", None), nn.Linear)
                and isinstance(getattr(getattr(attention, "output", None), "dense", None), nn.Linear)
                and isinstance(getattr(getattr(module, "intermediate", None), "dense", None), nn.Linear)
                and isinstance(getattr(getattr(module, "output", None), "dense", None), nn.Linear)):
            found.append((name, module))
    return found


def _bert_groups(root: nn.Module) -> list[UnitGroup]:
    groups = []
    for name, layer in bert_layers(root):
        att: Any = layer.attention.self  # type: ignore[union-attr]
        # A torch.export program's layer (lifted) has its Linear layers but reshapes to its head count in the
        # graph itself: its heads stay, its FFN units can go.
        head = int(getattr(att, "attention_head_size", 0))
        if head:
            groups.append(UnitGroup("heads", f"{name}.attention.self", att.query.out_features // head,
                                    [f"{name}.attention.self.{p}" for p in ("query", "key", "value")], head,
                                    consumers=[f"{name}.attention.output.dense"], consumer_width=head,
                                    owner=f"{name}.attention.self"))
        inter: Any = layer.intermediate.dense  # type: ignore[union-attr]
        groups.append(UnitGroup("ffn", f"{name}.intermediate", inter.out_features, [f"{name}.intermediate.dense"],
                                consumers=[f"{name}.output.dense"]))
    return groups


def _encoder_layer_groups(root: nn.Module, kinds: set[str]) -> list[UnitGroup]:
    groups = []
    for name, layer in list(root.named_modules()):
        if not isinstance(layer, nn.TransformerEncoderLayer):
            continue
        prefix = f"{name}." if name else ""
        attn = layer.self_attn
        if "heads" in kinds and isinstance(attn, nn.MultiheadAttention):
            try:
                layer.self_attn = PrunedMultiheadAttention.from_mha(attn)  # type: ignore[assignment]
            except TypeError as exc:
                log.info("structured: %s heads left: %s", name, exc)
        attn = layer.self_attn
        if isinstance(attn, PrunedMultiheadAttention):
            groups.append(UnitGroup("heads", f"{prefix}self_attn", attn.q_proj.out_features // attn.head_dim,
                                    [f"{prefix}self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")],
                                    attn.head_dim, consumers=[f"{prefix}self_attn.out_proj"],
                                    consumer_width=attn.head_dim, owner=f"{prefix}self_attn"))
        groups.append(UnitGroup("ffn", f"{prefix}linear1", layer.linear1.out_features, [f"{prefix}linear1"],
                                consumers=[f"{prefix}linear2"]))
    return groups


def _ffn_layers(root: nn.Module) -> list[tuple[str, FFNLayout]]:
    """(layer name, layout) of every feed-forward block of a known layout: Linear producers of one width (a
    SwiGLU's gate and up projections both), read by one Linear."""
    found = []
    modules = dict(root.named_modules())
    for name in modules:
        prefix = f"{name}." if name else ""
        for layout in FFN_LAYOUTS:
            producers = [modules.get(prefix + p) for p in layout.producers]
            consumer = modules.get(prefix + layout.consumer)
            if not all(isinstance(m, nn.Linear) for m in [*producers, consumer]):
                continue
            widths = {m.out_features for m in producers}  # type: ignore[union-attr]
            if len(widths) == 1 and consumer.in_features in widths:  # type: ignore[union-attr]
                found.append((name, layout))
    return found


def _ffn_groups(root: nn.Module, layers: list[tuple[str, FFNLayout]], claimed: set[str]) -> list[UnitGroup]:
    groups = []
    for name, layout in layers:
        prefix = f"{name}." if name else ""
        producers = [prefix + p for p in layout.producers]
        if set(producers) & claimed:
            continue
        width = _get(root, producers[0]).out_features
        group_name = prefix + layout.producers[0].rpartition(".")[0] if "." in layout.producers[0] else producers[0]
        groups.append(UnitGroup("ffn", group_name, width, producers, consumers=[prefix + layout.consumer]))
    return groups


def find_unit_groups(
    model: nn.Module,
    *,
    kinds: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_head: bool = True,
    example: Mapping[str, torch.Tensor] | None = None,
) -> list[UnitGroup]:
    """The prunable unit groups of a model, in model order.

    ``nn.MultiheadAttention`` modules of ``nn.TransformerEncoderLayer`` are replaced (same function) by
    :class:`PrunedMultiheadAttention` when heads are wanted.

    Args:
        model: an eager module (a Hugging Face wrapper is unwrapped).
        kinds: unit kinds to find (default: all of :data:`UNIT_KINDS`).
        targets: names/globs a group's name or one of its producers must match (None: all).
        exclude: names/globs of groups or producers to leave alone.
        keep_head: never remove outputs of the classifier head (its inputs may still shrink).
        example: inputs to export the model on when ``torch.fx`` cannot trace it (see :func:`example_inputs`).
    """
    root = unwrap(model)
    wanted = set(kinds or UNIT_KINDS)
    groups: list[UnitGroup] = []
    if {"heads", "ffn"} & wanted:
        groups += _bert_groups(root) + _encoder_layer_groups(root, wanted)
    ffn_layers = _ffn_layers(root)
    if "ffn" in wanted:
        groups += _ffn_groups(root, ffn_layers, {p for g in groups for p in g.producers})
    claimed = {p for g in groups for p in g.producers + g.consumers}
    if {"neurons", "channels"} & wanted and not bert_layers(root) and not ffn_layers:
        groups += module_groups(root, claimed, example)
    heads = head_layers(root) if keep_head else set()
    selected = []
    for group in groups:
        names = [group.name, *group.producers]
        if group.kind not in wanted or any(p in heads for p in group.producers):
            continue
        if targets is not None and not any(matches(n, targets) for n in names):
            continue
        if any(matches(n, exclude) for n in names):
            continue
        selected.append(group)
    return selected


# ---------------------------------------------------------------------------------------------------------------
# Importance
# ---------------------------------------------------------------------------------------------------------------


def _unit_sums(values: torch.Tensor, units: int, role: Literal["producer", "consumer"]) -> torch.Tensor:
    """Sum a per-weight tensor over each unit's rows (producer, bias too) or input columns (consumer)."""
    if role == "producer":
        return values.reshape(units, -1).sum(1)
    return values.transpose(0, 1).reshape(units, -1).sum(1)


def _group_tensors(root: nn.Module, group: UnitGroup) -> Iterator[tuple[torch.Tensor, str]]:
    for name in group.producers + group.depthwise:
        module = _get(root, name)
        yield module.weight, "producer"
        if module.bias is not None:
            yield module.bias, "producer"
    for name in group.consumers:
        yield _get(root, name).weight, "consumer"


def _magnitude_scores(root: nn.Module, groups: Sequence[UnitGroup],
                      norm: Literal["l1", "l2"]) -> dict[str, torch.Tensor]:
    scores = {}
    with torch.no_grad():
        for g in groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            for tensor, role in _group_tensors(root, g):
                vals = tensor.detach().abs() if norm == "l1" else tensor.detach().pow(2)
                total += _unit_sums(vals.double(), g.size, role)  # type: ignore[arg-type]
            scores[g.name] = total if norm == "l1" else total.sqrt()
    return scores


def _iterate(data: Sequence[Batch], num_samples: int, cycle: bool) -> Iterator[Batch]:
    seen = 0
    while seen < num_samples:
        progressed = False
        for batch in data:
            if seen >= num_samples:
                return
            b = int(next(iter(batch.values())).shape[0])
            take = min(b, num_samples - seen)
            yield batch if take == b else {k: v[:take] for k, v in batch.items()}
            seen += take
            progressed = True
        if not cycle or not progressed:
            return


@contextmanager
def _frozen_eval(root: nn.Module, trainable: Sequence[torch.Tensor] = ()) -> Iterator[None]:
    was = root.training
    flags = {id(p): p.requires_grad for p in root.parameters()}
    root.eval()
    for p in root.parameters():
        p.requires_grad_(False)
    for t in trainable:
        t.requires_grad_(True)
    try:
        yield
    finally:
        for p in root.parameters():
            p.requires_grad_(flags.get(id(p), True))
            p.grad = None
        root.train(was)


def _taylor_scores(model: nn.Module, groups: Sequence[UnitGroup], data: Sequence[Batch], objective: Objective,
                   output_fn: OutputFn, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    root = unwrap(model)
    tensors = {id(t): t for g in groups for t, _ in _group_tensors(root, g)}
    loss_fn = per_sample_loss(objective, output_fn, torch.Generator().manual_seed(seed))
    scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    labelled = objective == "labels"
    with _frozen_eval(root, list(tensors.values())):
        for batch in _iterate(data, num_samples, cycle=not labelled):
            for t in tensors.values():
                t.grad = None
            loss_fn(model, batch).mean().backward()
            with torch.no_grad():
                for g in groups:
                    for tensor, role in _group_tensors(root, g):
                        if tensor.grad is not None:
                            contrib = (tensor.detach() * tensor.grad).abs().double()
                            scores[g.name] += _unit_sums(contrib, g.size, role)  # type: ignore[arg-type]
    return scores


def _mask_shape(x: torch.Tensor, units: int, width: int, conv: bool) -> tuple[int, ...]:
    if conv:  # [b, C, *spatial]
        return (x.shape[0], units) + (1,) * (x.dim() - 2)
    return (x.shape[0],) + (1,) * (x.dim() - 2) + (units,)


def _fisher_scores(model: nn.Module, groups: Sequence[UnitGroup], data: Sequence[Batch], objective: Objective,
                   output_fn: OutputFn, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    root = unwrap(model)
    loss_fn = per_sample_loss(objective, output_fn, torch.Generator().manual_seed(seed))
    scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    current: dict[str, torch.Tensor] = {}

    def pre_hook(group: UnitGroup, conv: bool) -> Any:
        # One mask per forward, shared by every consumer of the group (a residual stream has several): its
        # gradient sums what removing the unit costs on every path.
        def fn(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            mask = current.get(group.name)
            if mask is None or mask.shape[0] != x.shape[0]:
                mask = torch.ones(x.shape[0], group.size, dtype=x.dtype, requires_grad=True)
                current[group.name] = mask
            scale = mask.reshape(_mask_shape(x, group.size, group.consumer_width, conv))
            if not conv and group.consumer_width > 1:
                scale = scale.repeat_interleave(group.consumer_width, -1)
            return (x * scale, *args[1:])

        return fn

    handles = []
    for g in groups:
        for name in g.consumers:
            consumer = _get(root, name)
            handles.append(consumer.register_forward_pre_hook(pre_hook(g, isinstance(consumer, _CONV))))
    labelled = objective == "labels"
    try:
        with _frozen_eval(root):
            for batch in _iterate(data, num_samples, cycle=not labelled):
                current.clear()
                losses = loss_fn(model, batch)
                names = [g.name for g in groups if g.name in current]
                grads = torch.autograd.grad(losses.sum(), [current[n] for n in names], allow_unused=True)
                for name, grad in zip(names, grads, strict=True):
                    if grad is not None:
                        per_sample = grad.reshape(grad.shape[0], -1, scores[name].numel()).sum(1)
                        scores[name] += per_sample.double().pow(2).sum(0)
    finally:
        for handle in handles:
            handle.remove()
    return scores


def unit_importance(
    model: nn.Module,
    groups: Sequence[UnitGroup],
    importance: Importance = "fisher",
    *,
    norm: Literal["l1", "l2"] = "l2",
    data: Sequence[Batch] | None = None,
    objective: Objective = "auto",
    output_fn: OutputFn = model_output,
    num_samples: int = 256,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A score per unit of each group (higher = keep), by group name; see the module docstring."""
    if importance == "magnitude":
        return _magnitude_scores(unwrap(model), groups, norm)
    if not data:
        raise ValueError(f"{importance} importance needs data")
    if importance == "taylor":
        return _taylor_scores(model, groups, data, objective, output_fn, num_samples, seed)
    return _fisher_scores(model, groups, data, objective, output_fn, num_samples, seed)


def choose_units(
    groups: Sequence[UnitGroup],
    scores: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    *,
    scope: Literal["layer", "global"] = "layer",
    normalize: bool = False,
    round_to: int = 1,
    min_keep: int = 1,
) -> dict[str, torch.Tensor]:
    """Sorted indices of the units to keep per group.

    Args:
        groups: the unit groups.
        scores: per-unit scores by group name.
        sparsity: fraction of units to remove, one value or per kind (``{"heads": 0.25, "ffn": 0.5}``; kinds
            not named are left alone).
        scope: the fraction per group (``"layer"``), or over all groups of a kind ranked together.
        normalize: divide each group's scores by their mean before a global ranking (for magnitude/Taylor).
        round_to: round each kept count up to a multiple of this (hardware-friendly sizes).
        min_keep: keep at least this many units per group.
    """
    def fraction(kind: str) -> float:
        if isinstance(sparsity, Mapping):
            return float(sparsity.get(kind, 0.0))
        return float(sparsity)

    counts: dict[str, int] = {}
    if scope == "layer":
        for g in groups:
            counts[g.name] = g.size - int(round(fraction(g.kind) * g.size))
    else:
        for kind in {g.kind for g in groups}:
            members = [g for g in groups if g.kind == kind]
            pooled = []
            for g in members:
                s = scores[g.name].double()
                if normalize:
                    s = s / s.mean().clamp_min(1e-30)
                pooled += [(float(v), g.name) for v in s]
            total = len(pooled)
            remove = int(round(fraction(kind) * total))
            order = sorted(pooled, key=lambda t: t[0])
            removed: dict[str, int] = {g.name: 0 for g in members}
            sizes = {g.name: g.size for g in members}
            for _, name in order:
                if remove <= 0:
                    break
                if sizes[name] - removed[name] > min_keep:
                    removed[name] += 1
                    remove -= 1
            for g in members:
                counts[g.name] = g.size - removed[g.name]
    keep: dict[str, torch.Tensor] = {}
    for g in groups:
        k = max(min_keep, min(g.size, counts[g.name]))
        if round_to > 1:
            k = min(g.size, -(-k // round_to) * round_to)
        ranked = torch.argsort(scores[g.name].double(), descending=True, stable=True)
        keep[g.name] = torch.sort(ranked[:k]).values
    return keep


# ---------------------------------------------------------------------------------------------------------------
# Rebuild
# ---------------------------------------------------------------------------------------------------------------


def _expand(index: torch.Tensor, width: int) -> torch.Tensor:
    if width == 1:
        return index
    return (index.unsqueeze(1) * width + torch.arange(width)).reshape(-1)


def _new_like(module: Any, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1) -> nn.Module:
    new: Any
    if isinstance(module, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    elif isinstance(module, _CONV):
        conv: Any = module
        # A subclass that computes as its torch class (transformers' EfficientNetDepthwiseConv2d takes other
        # arguments) is rebuilt as that class.
        base = next(c for c in type(conv).__mro__ if c in _CONV)
        kind = base if type(conv).forward is base.forward else type(conv)
        new = kind(weight.shape[1] * groups, weight.shape[0], conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, dilation=conv.dilation, groups=groups, bias=bias is not None,
                         padding_mode=conv.padding_mode)
    else:
        raise TypeError(f"cannot rebuild {type(module).__name__}")
    new.to(weight.device, weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(module.training)
    return new


def _slice_rows(module: Any, rows: torch.Tensor) -> nn.Module:
    weight = module.weight.detach()[rows]
    bias = module.bias.detach()[rows] if module.bias is not None else None
    return _new_like(module, weight, bias)


def _slice_cols(module: Any, cols: torch.Tensor) -> nn.Module:
    weight = module.weight.detach()[:, cols]
    bias = module.bias.detach() if module.bias is not None else None
    return _new_like(module, weight, bias)


def _slice_depthwise(conv: Any, keep: torch.Tensor) -> nn.Module:
    """A depthwise conv with only the filters `keep` (its inputs, outputs and groups shrink together)."""
    bias = conv.bias.detach()[keep] if conv.bias is not None else None
    return _new_like(conv, conv.weight.detach()[keep], bias, groups=len(keep))


def _slice_norm(norm: Any, index: torch.Tensor) -> nn.Module:
    new: Any = type(norm)(len(index), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                     track_running_stats=norm.track_running_stats)
    with torch.no_grad():
        if norm.affine:
            new.weight.copy_(norm.weight[index])
            new.bias.copy_(norm.bias[index])
        if norm.track_running_stats:
            new.running_mean.copy_(norm.running_mean[index])
            new.running_var.copy_(norm.running_var[index])
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    new.to(norm.weight.device if norm.affine else "cpu")
    new.train(norm.training)
    return new


def apply_group(model: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
    """Rebuild the group's layers keeping only the units `keep` (sorted indices), in place."""
    root = unwrap(model)
    rows = _expand(keep, group.width)
    for name in group.producers:
        _set(root, name, _slice_rows(_get(root, name), rows))
    for name in group.depthwise:
        _set(root, name, _slice_depthwise(_get(root, name), keep))
    for name in group.norms:
        _set(root, name, _slice_norm(_get(root, name), keep))
    cols = _expand(keep, group.consumer_width)
    for name in group.consumers:
        _set(root, name, _slice_cols(_get(root, name), cols))
    if group.owner is not None:
        owner = _get(root, group.owner)
        if hasattr(owner, "num_attention_heads"):
            owner.num_attention_heads = len(keep)
            owner.all_head_size = len(keep) * group.width
        if hasattr(owner, "num_heads"):
            owner.num_heads = len(keep)
    group.size = len(keep)


# ---------------------------------------------------------------------------------------------------------------
# Layer-wise reconstruction
# ---------------------------------------------------------------------------------------------------------------


def _parent(root: nn.Module, name: str) -> nn.Module | None:
    parent, _, _ = name.rpartition(".")
    return _get(root, parent) if parent else None


def _collect_io(model: nn.Module, teacher: nn.Module, consumer: str, data: Sequence[Batch]) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(student inputs, targets) of a consumer Linear on the data, tokens flattened, padding dropped.

    The target is the unpruned model's output of that layer. When the consumer's parent is called with a second
    tensor shaped like the consumer's output (a residual, as in BERT's ``output(hidden_states, input_tensor)``),
    the target also absorbs the difference of the residuals, so that the refit restores the residual sum.
    """
    s_root, t_root = unwrap(model), unwrap(teacher)
    store: dict[str, torch.Tensor] = {}
    handles = [
        _get(s_root, consumer).register_forward_pre_hook(lambda _m, a: store.__setitem__("x", a[0].detach())),
        _get(t_root, consumer).register_forward_hook(lambda _m, _a, out: store.__setitem__("y", out.detach())),
    ]
    for root, key in ((s_root, "s_res"), (t_root, "t_res")):
        parent = _parent(root, consumer)
        if parent is not None:
            handles.append(parent.register_forward_pre_hook(
                lambda _m, a, k=key: store.__setitem__(k, a[1].detach()) if len(a) > 1 and isinstance(
                    a[1], torch.Tensor) else None))
    xs, ys = [], []
    try:
        with torch.no_grad():
            for batch in data:
                store.clear()
                inputs = {k: v for k, v in batch.items() if k != LABELS}
                s_root(**inputs)
                t_root(**inputs)
                x, y = store["x"], store["y"]
                s_res, t_res = store.get("s_res"), store.get("t_res")
                if s_res is not None and t_res is not None and s_res.shape == y.shape == t_res.shape:
                    y = y + t_res - s_res
                mask = batch.get("attention_mask")
                if x.dim() == 3 and mask is not None and mask.shape == x.shape[:2]:
                    keep = mask.bool()
                    x, y = x[keep], y[keep]
                xs.append(x.reshape(-1, x.shape[-1]))
                ys.append(y.reshape(-1, y.shape[-1]))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(xs), torch.cat(ys)


def _ridge_refit(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor, damp: float) -> None:
    """Set `layer`'s weight and bias to the ridge least-squares fit of ``y ~ x``, the ridge scaled per feature
    (``damp`` times each centered input's energy, so features of any scale are shrunk alike)."""
    x64 = x.double()
    mean = x64.mean(0, keepdim=True)
    xc = x64 - mean
    gram = xc.T @ xc
    gram.diagonal().mul_(1 + damp).add_(1e-12)
    y64 = y.double()
    y_mean = y64.mean(0, keepdim=True)
    weight = torch.linalg.solve(gram, xc.T @ (y64 - y_mean))  # [in, out]
    bias = (y_mean - mean @ weight).squeeze(0)
    with torch.no_grad():
        layer.weight.copy_(weight.T.to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(bias.to(layer.bias.dtype))


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face config
# ---------------------------------------------------------------------------------------------------------------


def update_hf_config(root: nn.Module) -> dict[str, Any] | None:
    config = getattr(root, "config", None)
    layers = bert_layers(root)
    if config is not None and not layers:
        return _update_ffn_config(root, config)
    if config is None or not layers:
        return None
    heads, inter = {}, {}
    for i, (_, layer) in enumerate(layers):
        att: Any = layer.attention.self  # type: ignore[union-attr]
        heads[str(i)] = att.query.out_features // int(att.attention_head_size)
        inter[str(i)] = layer.intermediate.dense.out_features  # type: ignore[union-attr]
    shapes = {"num_heads": heads, "intermediate_size": inter}
    config.deepopt_pruned_shapes = shapes
    if len(set(inter.values())) == 1:
        config.intermediate_size = next(iter(inter.values()))
    return shapes


def _update_ffn_config(root: nn.Module, config: Any) -> dict[str, Any] | None:
    """The feed-forward width of a non-BERT transformers model in its config: one field, so every layer must
    keep the same width (scope 'layer'); a width per layer is recorded in ``deepopt_pruned_shapes``."""
    layers = _ffn_layers(root)
    if not layers:
        return None
    widths = {str(i): _get(root, f"{name}.{layout.producers[0]}" if name else layout.producers[0]).out_features
              for i, (name, layout) in enumerate(layers)}
    shapes = {layers[0][1].config_field: widths}
    if len(set(widths.values())) == 1:
        setattr(config, layers[0][1].config_field, next(iter(widths.values())))
    else:
        config.deepopt_pruned_shapes = shapes
    return shapes


def restore_pruned_shapes(model: nn.Module) -> bool:
    """Resize the layers of a BERT-family model built from a pruned model's config (``deepopt_pruned_shapes``)
    so that the pruned weights load into it (``load_state_dict``). Returns whether anything was resized."""
    root = unwrap(model)
    shapes = getattr(getattr(root, "config", None), "deepopt_pruned_shapes", None)
    if not shapes:
        return False
    for i, (name, layer) in enumerate(bert_layers(root)):
        att: Any = layer.attention.self  # type: ignore[union-attr]
        head = int(att.attention_head_size)
        heads = int(shapes["num_heads"].get(str(i), att.num_attention_heads))
        if heads * head != att.query.out_features:
            group = UnitGroup("heads", f"{name}.attention.self", att.query.out_features // head,
                              [f"{name}.attention.self.{p}" for p in ("query", "key", "value")], head,
                              consumers=[f"{name}.attention.output.dense"], consumer_width=head,
                              owner=f"{name}.attention.self")
            apply_group(root, group, torch.arange(heads))
        size = int(shapes["intermediate_size"].get(str(i), layer.intermediate.dense.out_features))  # type: ignore
        if size != layer.intermediate.dense.out_features:  # type: ignore[union-attr]
            group = UnitGroup("ffn", f"{name}.intermediate", layer.intermediate.dense.out_features,  # type: ignore
                              [f"{name}.intermediate.dense"], consumers=[f"{name}.output.dense"])
            apply_group(root, group, torch.arange(size))
    return True


def load_pruned_bert(folder: str | Path, model_class: Any = None) -> nn.Module:
    """Load a structurally pruned Hugging Face BERT-family model saved with ``save_pretrained`` (offline).

    Args:
        folder: the saved folder (config.json with ``deepopt_pruned_shapes``, model.safetensors).
        model_class: the ``transformers`` class (default: from ``config.architectures``, else ``AutoModel``).
    """
    import transformers
    from safetensors.torch import load_file

    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if model_class is None:
        name = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, name, None) if name else None
    model = model_class(config) if model_class is not None else transformers.AutoModel.from_config(config)
    restore_pruned_shapes(model)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    model.load_state_dict(state, strict=False)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class StructuredReport:
    """What structured pruning did: kept units per group, parameters before/after, timings, recovery."""

    sparsity: dict[str, float]
    importance: str
    params_before: int
    params_after: int
    groups: dict[str, dict[str, Any]]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"method": "structured", "sparsity": self.sparsity, "importance": self.importance,
                "params_before": self.params_before, "params_after": self.params_after,
                "param_ratio": round(self.param_ratio, 6), "groups": self.groups, "seconds": round(self.seconds, 3),
                **self.details}


def structured_prune(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    *,
    importance: Importance = "fisher",
    norm: Literal["l1", "l2"] = "l2",
    scope: Literal["layer", "global"] = "layer",
    kinds: Sequence[str] | None = None,
    data: Sequence[Batch] | None = None,
    objective: Objective = "auto",
    output_fn: OutputFn = model_output,
    num_samples: int = 256,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_head: bool = True,
    round_to: int = 1,
    min_keep: int = 1,
    reconstruct: bool = False,
    reconstruct_damp: float = 1e-2,
    scores: Mapping[str, torch.Tensor] | None = None,
    fine_tune: FineTune | Mapping[str, Any] | None = None,
    train_data: Sequence[Batch] | None = None,
    seed: int = 0,
) -> StructuredReport:
    """Remove whole units (neurons, conv channels, attention heads, FFN neurons) in place and rebuild the layers.

    Args:
        model: an eager module; Hugging Face models get a consistent config (see :func:`restore_pruned_shapes`).
        sparsity: fraction of units removed, one value for every kind or per kind
            (``{"heads": 0.25, "ffn": 0.5}``).
        importance: ``"magnitude"`` (L1/L2 of the unit's weights), ``"taylor"`` (first order) or ``"fisher"``
            (second order, Fisher of unit masks).
        norm: the magnitude norm.
        scope: the fraction per group, or ranked over all groups of a kind (magnitude/Taylor scores are normalized
            per group first).
        kinds: unit kinds to prune (default: all found).
        data: calibration batches (Taylor / Fisher importance, reconstruction).
        objective: per-sample loss for Taylor/Fisher (``"auto"`` = Gaussian output objective).
        output_fn: the model output the objective and recovery use.
        num_samples: samples for Taylor/Fisher.
        targets: group or producer names/globs to prune (None = all groups found).
        exclude: group or producer names/globs to leave alone.
        keep_head: never remove outputs of the classifier head.
        round_to: kept counts rounded up to a multiple of this.
        min_keep: units kept at least per group.
        reconstruct: refit every Linear consumer by ridge least squares to the unpruned model's output on `data`
            (skipped for a group when `data` has fewer than twice as many rows/tokens as the consumer's inputs).
        reconstruct_damp: ridge dampening, relative to each input feature's energy.
        scores: precomputed unit scores by group name (from :func:`unit_importance` on the same model), e.g.
            to try several sparsities with one importance pass.
        fine_tune: recovery (``{"epochs", "lr", ...}``; task with labels, else distillation from the unpruned
            model; ``hidden_weight`` adds hidden-state MSE on the transformer blocks).
        train_data: recovery batches (default: `data`).
        seed: seeds the objective's random draws.
    """
    started = time.perf_counter()
    root = unwrap(model)
    params_before = count_parameters(root)
    spec = FineTune.from_config(fine_tune)
    needs_teacher = reconstruct or (spec is not None and spec.epochs > 0 and spec.method != "task")
    groups = find_unit_groups(root, kinds=kinds, targets=targets, exclude=exclude, keep_head=keep_head,
                              example=example_inputs(root, data or train_data))
    if not groups:
        raise ValueError("no prunable unit groups found (consecutive Linear/Conv pairs, attention heads, FFN)")
    teacher = snapshot(model) if needs_teacher else None
    t0 = time.perf_counter()
    if scores is None:
        scores = unit_importance(model, groups, importance, norm=norm, data=data, objective=objective,
                                 output_fn=output_fn, num_samples=num_samples, seed=seed)
    importance_s = time.perf_counter() - t0
    keep = choose_units(groups, scores, sparsity, scope=scope, normalize=importance != "fisher", round_to=round_to,
                        min_keep=min_keep)
    summary: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    t0 = time.perf_counter()
    for group in groups:
        before = group.size
        refit = reconstruct and data and teacher is not None and len(group.consumers) == 1 and isinstance(
            _get(root, group.consumers[0]), nn.Linear)
        io = _collect_io(model, teacher, group.consumers[0], data) if refit else None  # type: ignore[arg-type]
        apply_group(model, group, keep[group.name])
        if io is not None:
            cols = _expand(keep[group.name], group.consumer_width)
            if io[0].shape[0] >= 2 * (len(cols) + 1):
                _ridge_refit(_get(root, group.consumers[0]), io[0][:, cols], io[1], reconstruct_damp)
            else:  # too few rows (tokens) for the inputs: a refit would overfit the calibration data
                skipped.append(group.name)
        summary[group.name] = {"kind": group.kind, "before": before, "kept": group.size}
    rebuild_s = time.perf_counter() - t0
    shapes = update_hf_config(root)
    recovery: dict[str, Any] = {}
    if spec is not None and spec.epochs > 0:
        recovery = recover(model, train_data if train_data is not None else (data or []), spec, teacher=teacher,
                           output_fn=output_fn)
    fractions: dict[str, float] = (
        {str(k): float(v) for k, v in sparsity.items()} if isinstance(sparsity, Mapping)
        else {str(k): float(sparsity) for k in sorted({g.kind for g in groups})})
    details: dict[str, Any] = {"scope": scope, "importance_seconds": round(importance_s, 3),
                               "rebuild_seconds": round(rebuild_s, 3), "reconstruct": bool(reconstruct),
                               "reconstruct_skipped": skipped,
                               "recovery": recovery}
    if shapes is not None:
        details["config_shapes"] = shapes
    return StructuredReport(fractions, importance, params_before, count_parameters(root), summary,
                            time.perf_counter() - started, details)
