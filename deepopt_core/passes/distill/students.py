"""Students derived from a teacher: fewer layers (`keep_every`) or narrower layers (`width_ratio`).

* Depth: every k-th layer of a Hugging Face encoder's layer list (``encoder.layer``, ``transformer.layer``,
  ``layers``), or of the largest ``ModuleList`` of identical blocks of a plain torch module, the last layer
  always among them; the config's layer count follows (DistilBERT, Sanh et al., 2019,
  https://arxiv.org/abs/1910.01108).
* Width, BERT family: the hidden units with the largest LayerNorm gains over all layers, in every head the
  query/key dimensions with the largest ``|W_q| * |W_k|`` row norms and the value dimensions with the largest
  ``|W_v| * |W_o|`` norms, the feed-forward units with the largest ``|W_in| * |W_out|`` (the heads stay, their
  size shrinks).
* Width, CNN/MLP (a torch.export program or eager module): every unit group of structured pruning
  (:func:`deepopt_core.passes.prune.structured.find_unit_groups`: a Linear's or Conv's outputs read only by the
  next Linear/Conv, through BatchNorms, depthwise convs and element-wise ops) keeps the units with the largest
  weight norms (Li et al., 2017, https://arxiv.org/abs/1608.08710); the head's outputs and a residual stream's
  channels stay.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from deepopt_core.errors import PassFailed
from deepopt_core.formats.torch_common import is_graph, is_script
from deepopt_core.passes.finetune.modules import lift, replace_module
from deepopt_core.passes.prune import structured
from deepopt_core.passes.prune.layouts import BERT_FAMILY

log = logging.getLogger("deepopt.passes.distill")


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "model.layers", "h"):
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList) and len(found) > 1:
            return path, found
    best: tuple[str, nn.ModuleList] | None = None
    for name, sub in model.named_modules():
        if isinstance(sub, nn.ModuleList) and len(sub) > 1 and len({type(m) for m in sub}) == 1 and (
                best is None or len(sub) > len(best[1])):
            best = (name, sub)
    return best


def kept_layers(count: int, every: int) -> list[int]:
    """Indices kept by `keep_every`: k-1, 2k-1, ..., always including the last layer."""
    kept = list(range(every - 1, count, every))
    if not kept or kept[-1] != count - 1:
        kept.append(count - 1)
    return sorted(set(kept))


def drop_layers(model: nn.Module, every: int) -> list[int]:
    """Keep every `every`-th layer of the encoder of `model` in place; returns the kept teacher indices."""
    found = _layer_list(model)
    if found is None:
        raise PassFailed("keep_every: no stack of encoder layers found in the model")
    path, layers = found
    kept = kept_layers(len(layers), every)
    replace_module(model, path, nn.ModuleList([layers[i] for i in kept]))
    config = getattr(model, "config", None)
    if config is not None:
        for attr in ("num_hidden_layers", "n_layers", "num_layers", "n_layer"):
            if hasattr(config, attr):
                setattr(config, attr, len(kept))
        for index, layer in enumerate(list(model.get_submodule(path).children())):
            for sub in layer.modules():
                if hasattr(sub, "layer_idx"):
                    setattr(sub, "layer_idx", index)  # noqa: B010
    return kept


# ---------------------------------------------------------------------------------------------------------------
# width: BERT family
# ---------------------------------------------------------------------------------------------------------------


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, keep).indices).values


def shrink_bert(model: Any, ratio: float) -> nn.Module:
    """A BERT-family model (``model.config``, ``embeddings``, ``encoder.layer``) narrowed to `ratio` of its hidden
    and feed-forward units, initialised from the kept units' weights."""
    config: Any = model.config
    base = model.base_model
    if not hasattr(base, "embeddings") or not hasattr(base, "encoder"):
        raise PassFailed(f"width_ratio: {config.model_type} is not a BERT-family encoder")
    heads = config.num_attention_heads
    head = config.hidden_size // heads
    new_head = max(1, round(head * ratio))
    hidden = new_head * heads
    inner = max(1, round(config.intermediate_size * ratio))
    state = model.state_dict()
    gains = torch.stack([t.abs().float() for n, t in state.items()
                         if "LayerNorm.weight" in n and t.shape == (config.hidden_size,)]).sum(0)
    keep_h = _top(gains, hidden)
    new_state: dict[str, torch.Tensor] = {}
    prefix = "" if base is model else f"{model.base_model_prefix}."
    for name, tensor in state.items():
        new_state[name] = tensor
    for name, tensor in state.items():
        inner_name = name.removeprefix(prefix)
        if inner_name.startswith("embeddings.") and tensor.dim() == 2 and tensor.shape[1] == config.hidden_size \
                and tensor.is_floating_point():
            new_state[name] = tensor[:, keep_h]
        elif "LayerNorm" in name and tensor.shape == (config.hidden_size,):
            new_state[name] = tensor[keep_h]
    for index in range(config.num_hidden_layers):
        p = f"{prefix}encoder.layer.{index}."
        q, k, v = (state[f"{p}attention.self.{x}.weight"] for x in ("query", "key", "value"))
        o = state[f"{p}attention.output.dense.weight"]
        qk_score = (q.norm(dim=1) * k.norm(dim=1)).view(heads, head)
        v_score = (v.norm(dim=1) * o.norm(dim=0)).view(heads, head)
        offsets = torch.arange(heads).unsqueeze(1) * head
        keep_qk = (torch.sort(torch.topk(qk_score, new_head, dim=1).indices, dim=1).values + offsets).reshape(-1)
        keep_v = (torch.sort(torch.topk(v_score, new_head, dim=1).indices, dim=1).values + offsets).reshape(-1)
        for x, rows in (("query", keep_qk), ("key", keep_qk), ("value", keep_v)):
            new_state[f"{p}attention.self.{x}.weight"] = state[f"{p}attention.self.{x}.weight"][rows][:, keep_h]
            new_state[f"{p}attention.self.{x}.bias"] = state[f"{p}attention.self.{x}.bias"][rows]
        new_state[f"{p}attention.output.dense.weight"] = o[keep_h][:, keep_v]
        new_state[f"{p}attention.output.dense.bias"] = state[f"{p}attention.output.dense.bias"][keep_h]
        w_in, w_out = state[f"{p}intermediate.dense.weight"], state[f"{p}output.dense.weight"]
        keep_i = _top(w_in.norm(dim=1) * w_out.norm(dim=0), inner)
        new_state[f"{p}intermediate.dense.weight"] = w_in[keep_i][:, keep_h]
        new_state[f"{p}intermediate.dense.bias"] = state[f"{p}intermediate.dense.bias"][keep_i]
        new_state[f"{p}output.dense.weight"] = w_out[keep_h][:, keep_i]
        new_state[f"{p}output.dense.bias"] = state[f"{p}output.dense.bias"][keep_h]
    new_config = config.__class__.from_dict(config.to_dict())
    new_config.hidden_size, new_config.intermediate_size = hidden, inner
    student = type(model)(new_config)
    shapes = {name: tuple(t.shape) for name, t in student.state_dict().items()}
    for name, tensor in state.items():
        if name not in shapes or (name in new_state and new_state[name] is not tensor):
            continue
        # The pooler and the task head (BERT's pooler.dense, RoBERTa's classifier.dense and out_proj): every
        # dimension that was the hidden size and is the student's hidden size keeps the kept hidden units.
        for dim, (was, now) in enumerate(zip(tensor.shape, shapes[name], strict=False)):
            if was == config.hidden_size and now == hidden != was:
                tensor = tensor.index_select(dim, keep_h)
        new_state[name] = tensor
    wrong = sorted(n for n, t in new_state.items() if n in shapes and tuple(t.shape) != shapes[n])
    if wrong:
        raise PassFailed(f"width_ratio: cannot narrow {', '.join(wrong[:5])} of {config.model_type}")
    student.load_state_dict({k: v.contiguous() for k, v in new_state.items()}, strict=False)
    return student.train(model.training)


# ---------------------------------------------------------------------------------------------------------------
# width: the unit groups structured pruning finds
# ---------------------------------------------------------------------------------------------------------------


def shrink_units(module: nn.Module, ratio: float, kinds: tuple[str, ...] = ("neurons", "channels")
                 ) -> dict[str, list[int]]:
    """Narrow every unit group structured pruning finds (Linear -> Linear and Conv -> Conv/Linear chains, through
    BatchNorms, depthwise convs and element-wise ops; a residual stream stays whole) to `ratio` of its units, the
    ones with the largest weight norms, in place.

    Returns:
        Group name (its producer) -> [units before, units after].

    Raises:
        PassFailed: no group (nothing the narrowing can rebuild).
    """
    groups = structured.find_unit_groups(module, kinds=kinds)
    if not groups:
        raise PassFailed("width_ratio: no layer of this model can be narrowed (no Linear/Conv output read only by "
                         "the next Linear/Conv, no feed-forward block of a known layout); give a student model_id "
                         "for this architecture")
    keep = structured.choose_units(groups, structured.unit_importance(module, groups, "magnitude"), 1.0 - ratio)
    shapes: dict[str, list[int]] = {}
    for group in groups:
        shapes[group.name] = [group.size, len(keep[group.name])]
        structured.apply_group(module, group, keep[group.name])
    if is_graph(module):
        module.recompile()  # type: ignore[operator]
    return shapes


def reinitialise(module: nn.Module) -> None:
    """Fresh weights for every layer that has ``reset_parameters`` (Hugging Face: its own init)."""
    init: Any = getattr(module, "_init_weights", None)
    sub: Any
    for sub in module.modules():
        if callable(init) and sub is not module:
            init(sub)
        elif hasattr(sub, "reset_parameters") and sub is not module:
            sub.reset_parameters()


def derive(core: nn.Module, keep_every: int | None, width_ratio: float | None, init: str, seed: int = 0) -> tuple[
        nn.Module, dict[str, Any]]:
    """A student derived from the teacher module `core` (which is left untouched); `seed` seeds the fresh
    weights of `init="random"`.

    Returns:
        (student, facts: kept layer indices, widths).
    """
    if is_script(core):
        raise PassFailed("a TorchScript teacher cannot be restructured; upload a .pt2 or Hugging Face model, or "
                         "give student.model_id")
    student = lift(copy.deepcopy(core))
    facts: dict[str, Any] = {}
    if keep_every is not None:
        if is_graph(student):
            raise PassFailed("keep_every needs a Hugging Face or eager torch encoder; a torch.export program "
                             "calls its layers by name")
        facts["kept_layers"] = drop_layers(student, keep_every)
    if width_ratio is not None:
        config: Any = getattr(student, "config", None)
        headed = getattr(student, "base_model", student) is not student
        if config is not None and config.model_type in BERT_FAMILY and headed:
            student = shrink_bert(student, width_ratio)
            facts["hidden_size"] = student.config.hidden_size  # type: ignore[union-attr]
            facts["intermediate_size"] = student.config.intermediate_size  # type: ignore[union-attr]
        elif config is not None:
            # The hidden size stays: a model without a task head is distilled on its hidden states, whose width
            # users of its output (embeddings) rely on, and one config field sets the width of every layer's FFN.
            facts["ffn_widths"] = shrink_units(student, width_ratio, kinds=("ffn",))
            structured.update_hf_config(student)
        else:
            facts["widths"] = shrink_units(student, width_ratio, kinds=("neurons", "channels", "ffn"))
    if init == "random":
        torch.manual_seed(seed)
        reinitialise(student)
    return student, facts
