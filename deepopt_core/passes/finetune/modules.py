"""Module surgery that training passes need: trainable eager modules from what the pipeline carries, layer names,
and task heads on Hugging Face models.

* A ``torch.export`` program's module calls ``aten.linear``/``aten.conv2d`` on weight attributes; :func:`lift`
  turns those calls into ``nn.Linear``/``nn.Conv2d`` submodules with the same parameters and names (``fc1``), so
  that PEFT, adapters, hooks and width surgery can work on them. The lifted module computes the same function.
* A Hugging Face model travels inside :class:`deepopt_core.formats.hf.HFWrapper`; :func:`with_head` replaces the
  wrapped model by its ``...ForSequenceClassification`` (``...ForImageClassification`` for an image model)
  sibling (base weights kept, a new head) when the labels need one, and writes the new config into a copy of the
  model folder for the ``hf`` output. A decoder's head pads with a pad token (:func:`pad_token_for`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from deepopt_core.errors import PassFailed
from deepopt_core.formats.torch_common import is_graph, is_script, unwrap

log = logging.getLogger("deepopt.passes.modules")
LEAF_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def is_hf(model: Any) -> bool:
    return bool(getattr(type(model), "is_hf_wrapper", False))


_LIFTED_CALLS = frozenset({"aten.linear.default", "aten.conv1d.default", "aten.conv2d.default",
                           "aten.conv1d.padding", "aten.conv2d.padding"})


def lift(module: nn.Module) -> nn.Module:
    """Turn ``aten.linear``/``aten.conv{1,2}d``/``aten.batch_norm``/``aten.addmm`` calls of a ``torch.export``
    GraphModule into Linear/Conv/BatchNorm/(transformers') Conv1D modules.

    Calls whose weight (and bias) are attributes ``<layer>.weight``/``<layer>.bias`` (and, for a norm, its running
    statistics ``<layer>.running_mean``/``<layer>.running_var``) become ``call_module`` nodes of a module named
    ``<layer>`` that holds the same tensors; other modules are returned unchanged. In eval mode the lifted module
    computes the same function (a norm exported in eval mode normalises by its running statistics, as the lifted
    one does in eval mode).
    """
    if not is_graph(module):
        return module
    gm: Any = module
    changed = False
    for node in list(gm.graph.nodes):
        target = str(node.target)
        if node.op != "call_function":
            continue
        if target == "aten.batch_norm.default":
            changed |= _lift_batch_norm(gm, node)
            continue
        if target == "aten.addmm.default":
            changed |= _lift_conv1d(gm, node)
            continue
        if target not in _LIFTED_CALLS:
            continue
        weight_node = node.args[1]
        bias_node = node.args[2] if len(node.args) > 2 else None
        if getattr(weight_node, "op", None) != "get_attr" or not str(weight_node.target).endswith(".weight"):
            continue
        layer = str(weight_node.target).removesuffix(".weight")
        if bias_node is not None and (getattr(bias_node, "op", None) != "get_attr"
                                      or str(bias_node.target) != f"{layer}.bias"):
            continue
        weight = gm.get_parameter(str(weight_node.target))
        bias = gm.get_parameter(str(bias_node.target)) if bias_node is not None else None
        if target == "aten.linear.default":
            new: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            stride, padding, dilation, groups = (list(node.args[3:7]) + [1, 0, 1, 1][len(node.args[3:7]):])
            conv = nn.Conv1d if target.startswith("aten.conv1d") else nn.Conv2d
            # The `.padding` overloads take "same" or "valid" (transformers' EfficientNet), as nn.Conv does.
            new = conv(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                       padding=padding, dilation=dilation, groups=groups, bias=bias is not None)
        new.weight = weight
        if bias is not None:
            new.bias = bias
        _replace_call(gm, node, layer, new)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return gm


def _replace_call(gm: Any, node: Any, layer: str, new: nn.Module, source: Any = None) -> None:
    parent_name, _, child = layer.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, child, new)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(layer, (node.args[0] if source is None else source,))
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)


def _lift_conv1d(gm: Any, node: Any) -> bool:
    """``aten.addmm(<layer>.bias, x, <layer>.weight)`` (transformers' Conv1D, GPT-2's projections, on rows
    flattened to 2-D) -> a Conv1D module of that layer, which computes the same on those rows."""
    if len(node.args) != 3 or node.kwargs:  # beta / alpha change the product
        return False
    bias_node, source, weight_node = node.args
    names = [getattr(a, "target", None) if getattr(a, "op", None) == "get_attr" else None
             for a in (weight_node, bias_node)]
    if names[0] is None or not str(names[0]).endswith(".weight"):
        return False
    layer = str(names[0]).removesuffix(".weight")
    if names[1] != f"{layer}.bias":
        return False
    from transformers.pytorch_utils import Conv1D

    weight = gm.get_parameter(f"{layer}.weight")
    new = Conv1D(weight.shape[1], weight.shape[0])
    new.weight = weight
    new.bias = gm.get_parameter(f"{layer}.bias")
    _replace_call(gm, node, layer, new, source)
    return True


def _lift_batch_norm(gm: Any, node: Any) -> bool:
    """``aten.batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)`` on the
    attributes of one layer -> a BatchNorm module of that layer (so that width surgery can slice it)."""
    args = list(node.args)
    if len(args) < 8 or args[5] is not False:  # a norm exported in training mode uses batch statistics
        return False
    names = [getattr(a, "target", None) if getattr(a, "op", None) == "get_attr" else None for a in args[1:5]]
    if any(name is None for name in names):
        return False
    layer = str(names[0]).removesuffix(".weight")
    if [str(n) for n in names] != [f"{layer}.{part}" for part in ("weight", "bias", "running_mean", "running_var")]:
        return False
    weight = gm.get_parameter(f"{layer}.weight")
    rank = node.args[0].meta.get("val").dim() if "val" in node.args[0].meta else 4
    norm_class = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
    if norm_class is None:
        return False
    new = norm_class(weight.shape[0], eps=float(args[7]), momentum=float(args[6]))
    new.weight = weight
    new.bias = gm.get_parameter(f"{layer}.bias")
    # The buffers are registered on the graph module by their dotted names; move them into the new module.
    new.running_mean = gm.get_buffer(f"{layer}.running_mean")
    new.running_var = gm.get_buffer(f"{layer}.running_var")
    new.eval()
    _replace_call(gm, node, layer, new)
    return True


def trainable_core(model: Any) -> nn.Module:
    """The module whose parameters train: the Hugging Face model of a wrapper, a lifted GraphModule, or a
    TorchScript module (parameters only; no modules can be inserted into it)."""
    core = unwrap(model)
    return lift(core) if is_graph(core) else core


def leaf_names(module: nn.Module, kinds: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)) -> list[str]:
    """Names of the leaf layers of these kinds (Linear and Conv by default; ``Conv1D`` of GPT-2 counts)."""
    if is_script(module):
        return []
    names = []
    for name, sub in module.named_modules():
        if name and (isinstance(sub, kinds) or (nn.Linear in kinds and type(sub).__name__ == "Conv1D")):
            names.append(name)
    return names


def head_names(module: nn.Module) -> list[str]:
    """Names of a Hugging Face model's task head (``classifier``, ``score``), trained in full with adapters."""
    return [n for n in ("classifier", "score", "pre_classifier", "qa_outputs") if hasattr(module, n)]


def _copy_folder(source: Path, workdir: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="hf-out-", dir=workdir)) / source.name
    shutil.copytree(source, target)
    return target


def write_config(model: nn.Module, source: Path | None, workdir: Path, tokenizer: Any = None) -> Path | None:
    """A copy of the Hugging Face folder `source` with `model`'s config.json, and `tokenizer` saved over the
    tokenizer files when given: the one the model trained with, pad token included (a decoder's is its
    end-of-sequence token, see :func:`deepopt_core.formats.hf.load_tokenizer`)."""
    if source is None:
        return None
    folder = _copy_folder(source, workdir)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    config = model.config.to_dict()  # type: ignore[union-attr, operator]
    config.pop("_attn_implementation_autoset", None)
    config.pop("_attn_implementation", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return folder


HEAD_SUFFIXES = ("ForSequenceClassification", "ForImageClassification")


def with_head(model: Any, num_labels: int, regression: bool, mode: str,
              pad_token_id: int | None = None) -> tuple[nn.Module, bool]:
    """A Hugging Face model with a classification (or regression) head for `num_labels` outputs: a sequence
    classification head on a text model, an image classification head on an image model (``pixel_values``).

    Args:
        model: the Hugging Face model (not the wrapper).
        num_labels: classes (1 for regression).
        regression: the head is trained with MSE (``problem_type: regression``).
        mode: ``keep`` the existing head (error if it does not fit), ``new`` always a fresh one, ``auto``: keep a
            fitting one.
        pad_token_id: set on a text model's config (see :func:`pad_token_for`; None leaves it as it is).

    Returns:
        (model, whether the config changed).

    Raises:
        PassFailed: the family has no classification class of its kind, or ``keep`` with a head that does not fit.
    """
    import transformers

    from deepopt_core.formats.hf_inspect import is_vision

    config = model.config
    vision = is_vision(config.to_dict())
    if vision:
        pad_token_id = None  # images have no padding
    problem = "regression" if regression else "single_label_classification"
    has_head = type(model).__name__.endswith(HEAD_SUFFIXES)
    fits = has_head and int(config.num_labels) == num_labels
    if mode == "keep" or (mode == "auto" and fits):
        if not fits:
            raise PassFailed(f"finetune: head 'keep' but the model has no head for {num_labels} outputs")
        changed = _set_pad_token(config, pad_token_id)
        if getattr(config, "problem_type", None) != problem:
            config.problem_type = problem
            changed = True
        return model, changed
    new_config = config.__class__.from_dict(config.to_dict())
    new_config.num_labels = num_labels
    new_config.problem_type = problem
    new_config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    new_config.label2id = {v: k for k, v in new_config.id2label.items()}
    auto, kind = ((transformers.AutoModelForImageClassification, "image") if vision
                  else (transformers.AutoModelForSequenceClassification, "sequence"))
    try:
        head_model = auto.from_config(new_config)
    except (ValueError, KeyError) as exc:
        raise PassFailed(f"finetune: {config.model_type} has no {kind} classification model: {exc}") from None
    source = model.base_model if has_head or hasattr(model, "base_model") else model  # type: ignore[union-attr]
    result = head_model.base_model.load_state_dict(source.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        log.info("new head: base weights not in the source: %s", missing[:5])
    head_model.config.architectures = [type(head_model).__name__]
    # Set after the model is built, as transformers users do (`model.config.pad_token_id = ...`): built with it,
    # a decoder's embedding would take the pad token as its padding_idx, which the uploaded model did not have.
    _set_pad_token(head_model.config, pad_token_id)
    return head_model.train(model.training), True


def _set_pad_token(config: Any, pad_token_id: int | None) -> bool:
    if pad_token_id is None or getattr(config, "pad_token_id", None) == pad_token_id:
        return False
    config.pad_token_id = pad_token_id
    return True


def reads_last_token(model: nn.Module) -> bool:
    """Whether a sequence classification head pools each row's last token that is not padding, which needs
    ``config.pad_token_id`` for batches of more than one row: the decoders' heads, which transformers names
    ``score`` (the encoders' ``classifier`` reads the first token)."""
    return type(model).__name__.endswith("ForSequenceClassification") and hasattr(model, "score")


def pad_token_for(config: Any, tokenizer: Any, requested: int | None) -> int | None:
    """The token id that pads rows, for a sequence classification head that reads each row's last token that is
    not padding (GPT-2, Llama, Qwen2: without one, they refuse batches of more than one row).

    `requested` (the spec's `pad_token_id`) first, then the config's and the tokenizer's pad token, then the
    end-of-sequence token, which is what users of decoders without a pad token pad with. None when the model
    names neither.
    """
    tokenizer_pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    for candidate in (requested, getattr(config, "pad_token_id", None), tokenizer_pad, eos):
        if isinstance(candidate, int):
            return candidate
    return None


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def rewrap(wrapper: Any, hf_model: nn.Module) -> Any:
    """The same kind of wrapper around another Hugging Face model (inputs positionally, tuple outputs)."""
    new = type(wrapper)(hf_model)
    return set_mode(new, False)


def check_trainable(model: Any) -> None:
    """Refuse quantized modules (packed int8 weights have no gradients): train before quantize."""
    for _, sub in unwrap(model).named_modules():
        if hasattr(sub, "_packed_params"):
            raise PassFailed("the model is already quantized; put training passes before quantize")


def set_mode(module: nn.Module, training: bool) -> nn.Module:
    """``module.train(training)``; a torch.export program keeps the mode it was exported in (its batch norms and
    dropouts are fixed in the graph, and ``train()``/``eval()`` raise)."""
    with contextlib.suppress(NotImplementedError):
        module.train(training)
    return module
