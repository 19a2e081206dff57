"""The `finetune` pass: LoRA (PEFT), bottleneck adapters, prefix tuning or full fine-tuning on uploaded data.

The model trains on the job's training dataset (`.jsonl` text tokenized with the model's tokenizer, or `.npz`
arrays) for classification (cross-entropy) or regression (MSE). Hugging Face models get a sequence
classification head (an image classification head for image models) when the labels need one; a decoder's head
pads with its pad token, else its end-of-sequence token, kept in the config and tokenizer of the outputs.
Accuracy (or MSE) is measured before and after on the eval dataset when it has labels, else on the held-out
split. The adapter alone is written as an artifact (`kind: adapter`: a zip of a PEFT folder for LoRA, loadable
with ``PeftModel.from_pretrained``; safetensors plus a JSON config for the adapters PEFT does not have). The pass
returns the fine-tuned model for the requested outputs: LoRA merged into the base weights (``merge: true``;
dequantize, merge, requantize over a quantized base, the merged model's fidelity to the adapter-on-base model
measured) or kept as separate layers.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepopt_core.errors import PassFailed
from deepopt_core.evaluate.metrics import compare
from deepopt_core.passes.context import PassContext
from deepopt_core.passes.finetune import adapters as ad
from deepopt_core.passes.finetune.config import default_targets, describe, matches
from deepopt_core.passes.finetune.modules import (
    HEAD_SUFFIXES,
    check_trainable,
    head_names,
    is_hf,
    leaf_names,
    pad_token_for,
    reads_last_token,
    rewrap,
    set_mode,
    trainable_core,
    with_head,
    write_config,
)  # fmt: skip
from deepopt_core.passes.finetune.training import (
    TrainData,
    load_train_data,
    predict,
    train,
    trainable_counts,
    training_device,
)  # fmt: skip

log = logging.getLogger("deepopt.passes.finetune")
REUSE_ACROSS_TRACKS = True  # the pipeline trains once per job and gives every output the same weights
CHECK_ROWS = 1024  # rows the before/after quality is measured on
DEFAULT_LR = {"lora": 1e-3, "adapter_series": 1e-3, "adapter_parallel": 1e-3, "prefix": 1e-2, "full": 5e-5}


def _forward(core: nn.Module, hf: bool, names: list[str]) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    if hf:
        return lambda b: core(**{n: b[n] for n in names if n in b}, return_dict=True).logits
    return lambda b: _first(core(*[b[n] for n in names]))


def _first(value: Any) -> torch.Tensor:
    while isinstance(value, list | tuple):
        value = value[0]
    return value  # type: ignore[no-any-return]


def task_loss(outputs: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return nn.functional.mse_loss(outputs.float().reshape(len(labels), -1)[:, 0], labels.float())
    return nn.functional.cross_entropy(outputs.float(), labels)


def quality(outputs: np.ndarray, labels: np.ndarray, regression: bool) -> dict[str, float]:
    """Accuracy (classification) or MSE (regression) of first outputs against labels."""
    if regression:
        return {"mse": round(float(np.mean((outputs.reshape(len(labels), -1)[:, 0] - labels) ** 2)), 6)}
    return {"accuracy": round(float((outputs.argmax(-1) == labels).mean()), 6)}


def _targets(spec: Any, core: nn.Module, hf: bool, kind: str) -> list[str]:
    """Module names the adapters go on: the spec's `target_modules`, or the family default, or every Linear."""
    wanted = spec.target_modules
    if wanted is None and hf:
        wanted = default_targets(getattr(core.config, "model_type", None), kind)
    heads = head_names(core) if hf else []
    # LoRA also goes on convolutions; a bottleneck adapter transforms the last dimension, a Linear layer's features.
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d) if kind == "lora" else (nn.Linear,)
    linear = [n for n in leaf_names(core, kinds) if not any(n == h or n.startswith(h + ".") for h in heads)]
    if wanted is None or wanted == ["all-linear"]:
        return linear
    candidates = leaf_names(core, (*kinds, nn.Embedding)) if kind == "lora" else linear
    found = [n for n in candidates if any(matches(n, t) for t in wanted)]
    unmatched = [t for t in wanted if not any(matches(n, t) for n in candidates)]
    if unmatched or not found:
        raise PassFailed(f"finetune: target_modules {unmatched or wanted} match no layer; layers are named like "
                         f"{candidates[:6]}")
    return found


def _zip_folder(folder: Path, path: Path, top: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"{top}/{file.name}")
    return path


def _adapter_artifact(ctx: PassContext, folder: Path, fmt: str) -> Path:
    from deepopt_core.result import ArtifactResult

    outdir = ctx.outdir or ctx.workdir
    filename = f"{ctx.output_name}-adapter.zip"
    path = _zip_folder(folder, (outdir / filename).resolve(), "adapter")
    ctx.artifacts.append(ArtifactResult(path=str(path), kind="adapter", format=fmt, filename=filename))
    return path


def _save_own_adapter(ctx: PassContext, core: nn.Module, spec: Any, extra: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    state = {n: p.detach().cpu().contiguous() for n, p in core.named_parameters() if p.requires_grad}
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        save_file(state, str(Path(tmp) / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {"format": "deepopt-adapter", "method": spec.method, **extra,
                  "base_architecture": ctx.info.architecture, "parameters": sorted(state)}
        (Path(tmp) / "adapter_config.json").write_text(json.dumps(config, indent=2))
        return _adapter_artifact(ctx, Path(tmp), "safetensors")


def attach_method(spec: Any, core: Any, hf: bool) -> tuple[Any, Any, dict[str, Any]]:
    """Put `spec.method`'s trainable parameters on `core` (in place) and freeze the rest.

    Returns:
        (the PEFT model for LoRA else None, a copy of the base under LoRA (to reload the adapter onto) else
        None, facts for the decisions).
    """
    method = spec.method
    detail: dict[str, Any] = {}
    heads = head_names(core) if hf else []
    for param in core.parameters():
        param.requires_grad_(method == "full")
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        if spec.base_quantization:
            bits = 8 if spec.base_quantization == "int8" else 4
            detail["quantized_base_layers"] = len(ad.quantize_base(core, bits, heads))
        targets = _targets(spec, core, hf, "lora")
        # PEFT adapts a grouped conv (a depthwise one) only when the rank is a multiple of its groups; the others
        # stay frozen and are listed, instead of failing the job.
        grouped = {n: int(getattr(core.get_submodule(n), "groups", 1)) for n in targets}
        left = {n: f"groups={g} does not divide the rank r={spec.r}" for n, g in grouped.items() if spec.r % g}
        if hf and getattr(getattr(core, "config", None), "tf_padding", False):
            # transformers' MobileNets pad TF-style by reading each conv's stride and kernel size, which PEFT's
            # LoRA wrapper of a conv does not expose: their convs stay frozen (the head still trains).
            left.update({n: "the model's TF-style padding reads the conv's stride, which a LoRA conv hides"
                         for n in targets if isinstance(core.get_submodule(n), nn.Conv2d) and n not in left})
        targets = [n for n in targets if n not in left]
        if not targets:
            raise PassFailed(f"finetune: LoRA can adapt none of the layers {sorted(left)[:6]}: "
                             f"{next(iter(left.values()))}")
        if left:
            detail["left_frozen"] = left
        base_copy = copy.deepcopy(core)
        text_head = hf and bool(heads) and type(core).__name__.endswith("ForSequenceClassification")
        config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                            modules_to_save=heads or None, task_type=TaskType.SEQ_CLS if text_head else None)
        detail["target_modules"] = targets
        return get_peft_model(core, config), base_copy, detail
    if method in ("adapter_series", "adapter_parallel"):
        targets = _targets(spec, core, hf, "adapter")
        ad.add_bottlenecks(core, targets, method.removeprefix("adapter_"), spec.bottleneck_size, spec.scaling)
        detail["target_modules"] = targets
    elif method == "prefix":
        detail["prefix_layers"] = ad.add_prefix(core, spec.num_virtual_tokens, spec.seed)
    if method != "full":
        for name, param in core.named_parameters():
            own = ".adapter." in f".{name}" or "prefix_" in name
            param.requires_grad_(own or any(name.startswith(h + ".") for h in heads))
    return None, None, detail


def apply_torch(spec: Any, model: Any, ctx: PassContext) -> Any:
    """Fine-tune `model` with `spec.method` on ``ctx.train``; returns the model for the outputs.

    Raises:
        PassFailed: no labelled training data, untrainable (quantized) model, targets that match nothing, a
            method the model cannot take, or an output format that cannot hold the result.
    """
    torch.manual_seed(spec.seed)
    check_trainable(model)
    hf = is_hf(model)
    method = spec.method
    if method == "prefix" and not hf:
        raise PassFailed("prefix tuning needs a Hugging Face BERT-family model")
    unmergeable = method in ("adapter_series", "adapter_parallel", "prefix") or (method == "lora" and not spec.merge)
    if unmergeable and "hf" in ctx.outputs:
        raise PassFailed(f"finetune: {method}{' with merge: false' if method == 'lora' else ''} keeps extra layers "
                         "that a Hugging Face folder cannot hold; ask for onnx/torchscript/torch_export outputs "
                         "(the adapter artifact holds the adapter alone)")
    device = training_device(spec.device, ctx.device)
    targets_raw = getattr(ctx.train, "targets", None)
    regression = spec.task == "regression" or (spec.task == "auto" and targets_raw is not None)
    data = load_train_data(ctx.train, ctx.info, ctx.tokenizer, max_length=spec.max_length, regression=regression)
    if data.labels is None:
        raise PassFailed("finetune needs labels in the training data")
    core: Any = trainable_core(model)
    num_labels = 1 if regression else int(spec.num_labels or _classes(data.labels, core, hf))
    train_split, held = data.split(spec.validation_split, spec.seed)
    evaluation = _eval_data(ctx, spec, regression)
    check, checked_on = (evaluation, "eval") if evaluation else ((held, "held_out") if held else (train_split, "train"))
    check = check.subset(np.arange(min(check.rows, CHECK_ROWS)))
    names = data.names

    if hf:
        pad_token_id = pad_token_for(core.config, ctx.tokenizer, spec.pad_token_id)
        core, changed = with_head(core, num_labels, regression, spec.head, pad_token_id)
        if reads_last_token(core) and core.config.pad_token_id is None:
            raise PassFailed(f"finetune: {core.config.model_type}'s classification head reads each row's last "
                             "token that is not padding, and the model names no pad or end-of-sequence token: "
                             "give pad_token_id")
        if changed:
            ctx.hf_folder = write_config(core, ctx.hf_folder, ctx.workdir, ctx.tokenizer) or ctx.hf_folder
    core.to(device)
    forward = _forward(core, hf, names)
    set_mode(core, False)
    before = quality(predict(forward, check, device), check.labels, regression)  # type: ignore[arg-type]
    if not regression and not hf:
        width = predict(forward, check.subset(np.arange(1)), device).shape[-1]
        if width < num_labels:
            raise PassFailed(f"finetune: the model has {width} outputs but the labels have {num_labels} classes")

    peft_model, base_copy, detail = attach_method(spec, core, hf)
    if spec.gradient_checkpointing:
        if hf and hasattr(core, "gradient_checkpointing_enable"):
            core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            ctx.warn("finetune: gradient_checkpointing applies to Hugging Face models only; ignored")
    core.to(device)
    counts = trainable_counts(core)
    params = [p for p in core.parameters() if p.requires_grad]
    lr = spec.lr or (DEFAULT_LR[method] if hf or method != "full" else 1e-3)
    run = train(params, lambda b: task_loss(forward(b), b["labels"], regression), train_split, spec, ctx,
                device=device, lr=lr, modules=[core], held_out=held)
    set_mode(core, False)
    adapted = predict(forward, check, device)
    after = quality(adapted, check.labels, regression)  # type: ignore[arg-type]
    if spec.gradient_checkpointing and hf and hasattr(core, "gradient_checkpointing_disable"):
        core.gradient_checkpointing_disable()

    if peft_model is not None:
        core = _finish_lora(spec, ctx, peft_model, base_copy, forward, check, adapted, device, detail, hf, names)
    elif method != "full":
        extra = {"target_modules": detail.get("target_modules"), "bottleneck_size": getattr(spec, "bottleneck_size",
                 None), "scaling": getattr(spec, "scaling", None), "num_virtual_tokens": getattr(
                 spec, "num_virtual_tokens", None)}
        _save_own_adapter(ctx, core, spec, {k: v for k, v in extra.items() if v is not None})
    core = set_mode(core.to("cpu"), False)
    for param in core.parameters():
        param.requires_grad_(False)
    ctx.decisions.update({
        "method": method, "task": "regression" if regression else "classification", "num_labels": num_labels,
        **counts, **detail, "train_rows": train_split.rows, "held_out_rows": held.rows if held else 0,
        "checked_on": checked_on,
        "before": before, "after": after, "device": device.type, "lr": lr, **run.summary(),
        "settings": describe(spec),
    })  # fmt: skip
    return rewrap(model, core) if hf else core


def _classes(labels: np.ndarray, core: Any, hf: bool) -> int:
    """Classes of the head when the spec names none: those the labels use; on a Hugging Face model at least two
    (transformers refuses a one-class classification config) and all those of a head it has that covers the
    labels (the head is kept, not replaced by a narrower one)."""
    used = int(labels.max()) + 1
    if not hf:
        return used
    has_head = type(core).__name__.endswith(HEAD_SUFFIXES)
    existing = int(core.config.num_labels) if has_head else 0
    return existing if existing >= used else max(used, 2)


def _eval_data(ctx: PassContext, spec: Any, regression: bool) -> TrainData | None:
    if ctx.eval is None or (ctx.eval.labels is None and ctx.eval.targets is None):
        return None
    try:
        return load_train_data(ctx.eval, ctx.info, ctx.tokenizer, max_length=spec.max_length, regression=regression)
    except PassFailed:
        return None


def _finish_lora(spec: Any, ctx: PassContext, peft_model: Any, base_copy: Any, forward: Any, check: TrainData,
                 adapted: np.ndarray, device: torch.device, detail: dict[str, Any], hf: bool,
                 names: list[str]) -> nn.Module:
    """Write the PEFT adapter (and check that it reloads onto the base), then merge (or not)."""
    from peft import PeftModel

    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        peft_model.save_pretrained(tmp)
        _adapter_artifact(ctx, Path(tmp), "peft")
        reloaded: Any = PeftModel.from_pretrained(base_copy.to(device), tmp).eval()
        again = predict(_forward(reloaded.base_model.model, hf, names), check, device)
        detail["adapter_reload_max_abs_diff"] = float(np.abs(again - adapted).max())
    del reloaded, base_copy
    core: Any = peft_model.base_model.model
    if not spec.merge:
        detail["merged"] = False
        return core
    quantized = ad.merge_into_quantized(peft_model) if spec.base_quantization else 0
    core = peft_model.merge_and_unload()
    set_mode(core, False)
    merged = predict(forward_of(core, hf, names), check, device)
    detail.update({"merged": True, "merge_fidelity": compare(adapted, merged),
                   "requantized_layers": quantized})
    if spec.base_quantization and "hf" in ctx.outputs:
        detail["dequantized_for_hf"] = ad.dequantize_all(core)
    return core


def forward_of(core: nn.Module, hf: bool, names: list[str]) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    return _forward(core, hf, names)
