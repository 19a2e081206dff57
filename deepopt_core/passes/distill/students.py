"""Students derived from a teacher: fewer layers (`keep_every`) or narrower layers (`width_ratio`).

* Depth: every k-th layer of a Hugging Face encoder's layer list (``encoder.layer``, ``transformer.layer``,
  ``layers``), or of the largest ``ModuleList`` of identical blocks of a plain torch module, the last layer
  always among them; the config's layer count follows (DistilBERT, Sanh et al., 2019,
  https://arxiv.org/abs/1910.01108).
* Width, BERT family: the hidden units with the largest LayerNorm gains over all layers, in every head the
  query/key dimensions with the largest ``|W_q| * |W_k|`` row norms and the value dimensions with the largest
  ``|W_v| * |W_o|`` norms, the feed-forward units with the largest ``|W_in| * |W_out|`` (the heads stay, their
  size shrinks).
* Width, CNN/MLP (a chain of Linear/Conv layers, as a torch.export program or eager module): the output
  channels/neurons of every layer but the last with the largest weight norms (Li et al., 2017,
  https://arxiv.org/abs/1608.08710), and the inputs of the next layer that read them (a Linear after a flatten
  reads a block per channel); batch norms between follow.
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
    for name, tensor in state.items():
        if name in new_state and new_state[name] is not tensor:
            continue
        inner_name = name.removeprefix(prefix)
        if inner_name.startswith("pooler.dense.weight"):
            new_state[name] = tensor[keep_h][:, keep_h]
        elif inner_name.startswith("pooler.dense.bias"):
            new_state[name] = tensor[keep_h]
        elif tensor.dim() == 2 and tensor.shape[1] == config.hidden_size and tensor.is_floating_point() \
                and not inner_name.startswith("encoder"):
            new_state[name] = tensor[:, keep_h]  # the task head
    new_config = config.__class__.from_dict(config.to_dict())
    new_config.hidden_size, new_config.intermediate_size = hidden, inner
    student = type(model)(new_config)
    student.load_state_dict({k: v.contiguous() for k, v in new_state.items()}, strict=False)
    return student.train(model.training)


# ---------------------------------------------------------------------------------------------------------------
# width: chains of Linear/Conv layers
# ---------------------------------------------------------------------------------------------------------------


def _chain(module: nn.Module) -> list[str]:
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    if is_graph(module):
        graph: Any = module.graph
        return [str(n.target) for n in graph.nodes
                if n.op == "call_module" and isinstance(module.get_submodule(str(n.target)), kinds)]
    return [n for n, m in module.named_modules() if n and isinstance(m, kinds)]


def _norms_after(module: nn.Module, layer: str) -> list[tuple[Any, list[str]]]:
    """Batch norms fed by `layer`: (owner module, attribute names) of functional batch norms in a graph, or
    ``(BatchNorm module, [])`` of eager ones."""
    found: list[tuple[Any, list[str]]] = []
    if is_graph(module):
        graph: Any = module.graph
        for node in graph.nodes:
            if node.op == "call_function" and "batch_norm" in str(node.target) and getattr(
                    node.args[0], "target", None) == layer:
                attrs = [str(a.target) for a in node.args[1:5] if getattr(a, "op", None) == "get_attr"]
                found.append((module, attrs))
    return found


def _slice_attr(root: nn.Module, name: str, index: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    value = getattr(owner, attr)
    if isinstance(value, nn.Parameter):
        setattr(owner, attr, nn.Parameter(value.detach()[index].clone(), requires_grad=value.requires_grad))
    else:
        owner.register_buffer(attr, value[index].clone())


def shrink_chain(module: nn.Module, ratio: float) -> dict[str, list[int]]:
    """Narrow every Linear/Conv layer of a chain but the last to `ratio` of its outputs, in place.

    Returns:
        Layer name -> [outputs before, outputs after].

    Raises:
        PassFailed: the layers do not form a chain (an input size that is not a multiple of the previous
            layer's outputs).
    """
    names = _chain(module)
    if len(names) < 2:
        raise PassFailed("width_ratio: the model needs at least two Linear/Conv layers in a chain")
    eager_norms: dict[str, nn.Module] = {}
    last_layer = None
    for name, sub in module.named_modules():
        if name in names:
            last_layer = name
        elif isinstance(sub, nn.BatchNorm1d | nn.BatchNorm2d) and last_layer is not None:
            eager_norms[last_layer] = sub
    shapes: dict[str, list[int]] = {}
    for current, following in zip(names, names[1:], strict=False):
        layer: Any = module.get_submodule(current)
        nxt: Any = module.get_submodule(following)
        weight = layer.weight.detach()
        outputs = weight.shape[0]
        keep = _top(weight.reshape(outputs, -1).norm(dim=1), max(1, round(outputs * ratio)))
        inputs = nxt.weight.shape[1] * (getattr(nxt, "groups", 1) or 1)
        if inputs % outputs or getattr(layer, "groups", 1) != 1 or getattr(nxt, "groups", 1) != 1:
            raise PassFailed(f"width_ratio: {following!r} does not read {current!r} as a chain; give a student "
                             "model_id for this architecture")
        block = inputs // outputs
        columns = (keep.unsqueeze(1) * block + torch.arange(block)).reshape(-1)
        _narrow(layer, rows=keep)
        _narrow(nxt, columns=columns)
        for owner, attrs in _norms_after(module, current):
            for attr in attrs:
                _slice_attr(owner, attr, keep)
        if current in eager_norms:
            norm: Any = eager_norms[current]
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(norm, attr, None) is not None:
                    _slice_attr(norm, attr, keep)
            norm.num_features = len(keep)  # type: ignore[assignment]
        shapes[current] = [int(outputs), len(keep)]
    if is_graph(module):
        module.recompile()  # type: ignore[operator]
    return shapes


def _narrow(layer: Any, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> None:
    weight = layer.weight.detach()
    bias = layer.bias.detach() if getattr(layer, "bias", None) is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if columns is not None:
        weight = weight[:, columns]
    layer.weight = nn.Parameter(weight.clone())
    if bias is not None:
        layer.bias = nn.Parameter(bias.clone())
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = weight.shape
    else:
        layer.out_channels, layer.in_channels = weight.shape[:2]  # type: ignore[assignment]


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
        if hasattr(student, "config") and hasattr(getattr(student, "base_model", None), "encoder"):
            student = shrink_bert(student, width_ratio)
            facts["hidden_size"] = student.config.hidden_size  # type: ignore[union-attr]
            facts["intermediate_size"] = student.config.intermediate_size  # type: ignore[union-attr]
        else:
            facts["widths"] = shrink_chain(student, width_ratio)
    if init == "random":
        torch.manual_seed(seed)
        reinitialise(student)
    return student, facts
