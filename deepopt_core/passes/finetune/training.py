"""The training loop that `finetune` and `distill` share, and the training data as tensors.

One loop: AdamW with linear warm-up and decay, gradient accumulation, autocast mixed precision (a gradient scaler
for fp16), gradient clipping, a held-out split evaluated about ten times per run with early stopping (the best
weights are restored), and progress with the latest loss through :meth:`PassContext.progress` at most twice a
second, so that a job shows its stage and loss while it trains and a cancel (which kills the process) is never
waiting on a long silent step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deepopt_core.datasets import Dataset
from deepopt_core.errors import PassFailed
from deepopt_core.passes.context import PassContext
from deepopt_core.passes.finetune.config import TrainingConfig
from deepopt_core.passes.finetune.modules import set_mode
from deepopt_core.specs import ModelInfo

log = logging.getLogger("deepopt.passes.training")
DEFAULT_EPOCHS = 3
REPORT_EVERY_S = 0.5
CURVE_POINTS = 50
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def training_device(setting: str, job_device: str) -> torch.device:
    """`cuda` when asked for or (`auto`) present; a job on the GPU queue also trains there."""
    if setting == "cuda" or (setting == "auto" and (job_device == "cuda" or torch.cuda.is_available())):
        if not torch.cuda.is_available():
            raise PassFailed("training on cuda was asked for, but this worker has no GPU")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class TrainData:
    """Model inputs (in the model's input order) and labels: int64 classes or float32 regression targets."""

    features: dict[str, np.ndarray]
    names: list[str]
    labels: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(next(iter(self.features.values())))

    def subset(self, index: np.ndarray) -> TrainData:
        return TrainData({k: v[index] for k, v in self.features.items()}, self.names,
                         None if self.labels is None else self.labels[index])

    def split(self, fraction: float, seed: int) -> tuple[TrainData, TrainData | None]:
        """(train, held-out); no held-out split when `fraction` is 0 or the data has fewer than 10 rows."""
        held = int(round(self.rows * fraction))
        if held < 1 or self.rows - held < 2 or self.rows < 10:
            return self, None
        order = np.random.default_rng(seed).permutation(self.rows)
        return self.subset(np.sort(order[held:])), self.subset(np.sort(order[:held]))

    def batch(self, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Rows as tensors; token inputs are cut to the longest attention mask of the batch."""
        arrays = {k: v[index] for k, v in self.features.items()}
        mask = arrays.get("attention_mask")
        if mask is not None and mask.ndim == 2:
            length = max(int(mask.sum(1).max()), 1)
            arrays = {k: (v[:, :length] if k in TOKEN_INPUTS and v.ndim == 2 else v) for k, v in arrays.items()}
        out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
        if self.labels is not None:
            out["labels"] = torch.from_numpy(self.labels[index]).to(device)
        return out

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, size):
            yield np.arange(start, min(start + size, self.rows))


def load_train_data(dataset: Dataset | None, info: ModelInfo, tokenizer: Any, *, max_length: int,
                    regression: bool = False) -> TrainData:
    """The training dataset as model inputs: .npz arrays by input name, or .jsonl text tokenized with the
    model's own tokenizer (padded to the longest row, at most `max_length` tokens).

    Raises:
        PassFailed: no training data, or text without a tokenizer.
    """
    if dataset is None:
        raise PassFailed("this pass trains on data: give a training dataset")
    names = [t.name for t in info.inputs]
    if dataset.texts is not None:
        if tokenizer is None:
            raise PassFailed("text training data needs a Hugging Face model with a tokenizer")
        encoded = tokenizer(dataset.texts, padding="longest", truncation=True, max_length=max_length,
                            return_tensors="np")
        arrays = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}
    else:
        arrays = dict(dataset.arrays)
    features: dict[str, np.ndarray] = {}
    for tensor in info.inputs:
        dtype = np.dtype(tensor.dtype) if tensor.dtype not in ("bfloat16", "unknown") else np.dtype("float32")
        if tensor.name in arrays:
            features[tensor.name] = np.ascontiguousarray(arrays[tensor.name].astype(dtype, copy=False))
        elif tensor.name in ("attention_mask", "token_type_ids") and "input_ids" in arrays:
            fill = np.ones if tensor.name == "attention_mask" else np.zeros
            features[tensor.name] = fill(arrays["input_ids"].shape, dtype=dtype)
        else:
            raise PassFailed(f"the training data has no array {tensor.name!r} for the model input")
    labels = None
    if regression:
        raw = dataset.targets if dataset.targets is not None else dataset.labels
        labels = None if raw is None else np.asarray(raw, dtype=np.float32)
    elif dataset.labels is not None:
        labels = np.asarray(dataset.labels, dtype=np.int64)
    return TrainData(features, names, labels)


@dataclass
class LoopResult:
    """What a training run did: optimizer steps, the loss curve (step, mean loss), held-out losses, timing."""

    steps: int = 0
    epochs: float = 0.0
    loss_curve: list[list[float]] = field(default_factory=list)
    eval_curve: list[list[float]] = field(default_factory=list)
    best_eval_loss: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    step_time_ms: float = 0.0
    peak_memory_bytes: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "epochs": round(self.epochs, 3), "loss_curve": self.loss_curve,
            "final_loss": self.loss_curve[-1][1] if self.loss_curve else None, "eval_loss_curve": self.eval_curve,
            "best_eval_loss": self.best_eval_loss, "stopped_early": self.stopped_early,
            "train_seconds": round(self.seconds, 3), "step_time_ms": round(self.step_time_ms, 3),
            "peak_memory_bytes": self.peak_memory_bytes,
        }  # fmt: skip


def _rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return 0


def planned_steps(spec: TrainingConfig, rows: int) -> tuple[int, int]:
    """(optimizer steps, micro-batches per epoch) for `rows` training rows."""
    per_epoch = max(1, math.ceil(rows / spec.batch_size))
    updates_per_epoch = max(1, math.ceil(per_epoch / spec.gradient_accumulation_steps))
    epochs = spec.epochs or (None if spec.max_steps else DEFAULT_EPOCHS)
    total = updates_per_epoch * epochs if epochs else spec.max_steps or 1
    if spec.max_steps:
        total = min(total, spec.max_steps)
    return total, per_epoch


def autocast(spec: TrainingConfig, device: torch.device) -> Any:
    """The autocast context of forward passes for `spec.mixed_precision` (a no-op for "no")."""
    if spec.mixed_precision == "no":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if spec.mixed_precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(params: list[nn.Parameter], loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], data: TrainData,
          spec: TrainingConfig, ctx: PassContext, *, device: torch.device, lr: float, modules: list[nn.Module],
          held_out: TrainData | None = None, after_step: Callable[[], None] | None = None,
          augment: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> LoopResult:
    """Train `params` to minimise `loss_fn` over `data`.

    Args:
        params: the trainable parameters.
        loss_fn: batch (inputs by name, plus ``labels``) -> scalar loss; called under autocast.
        data: the training split.
        spec: epochs/steps, batch size, accumulation, precision, early stopping.
        ctx: progress and metrics go to ``ctx.progress``.
        device: where the batches go.
        lr: peak learning rate.
        modules: put in train mode while training and eval mode for held-out evaluations and at the end.
        held_out: evaluated about ten times; with ``spec.early_stopping_patience`` the best weights are kept.
        after_step: called after every optimizer step (re-applying sparsity masks).
        augment: applied to each training batch.

    Returns:
        The steps, loss curve, held-out losses and timing.
    """
    if not params:
        raise PassFailed("nothing to train: no trainable parameters")
    total, per_epoch = planned_steps(spec, data.rows)
    accumulation = spec.gradient_accumulation_steps
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay)
    warmup = int(spec.warmup_ratio * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / max(1, warmup) if warmup else 1.0, max(0.0, (total - s) / max(1, total - warmup))))
    scaler = torch.amp.GradScaler(device.type, enabled=spec.mixed_precision == "fp16")
    eval_every = spec.eval_every or max(1, total // 10)
    generator = torch.Generator().manual_seed(spec.seed)
    result = LoopResult()
    best_state: list[torch.Tensor] | None = None
    bad_evals = 0
    window: list[float] = []
    curve_every = max(1, total // CURVE_POINTS)
    started = last_report = time.monotonic()
    rss0 = peak_rss = _rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for module in modules:
        set_mode(module, True)
    micro = 0
    while result.steps < total:
        order = torch.randperm(data.rows, generator=generator).numpy()
        for start in range(0, data.rows, spec.batch_size):
            batch = data.batch(order[start: start + spec.batch_size], device)
            if augment is not None:
                batch = augment(batch)
            with autocast(spec, device):
                loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise PassFailed(f"training diverged at step {result.steps} (loss {float(loss)}); lower lr")
            scaler.scale(loss / accumulation).backward()
            window.append(float(loss.detach()))
            micro += 1
            if micro % accumulation:
                continue
            if spec.max_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step()
            result.steps += 1
            peak_rss = max(peak_rss, _rss())
            if result.steps % curve_every == 0 or result.steps == total:
                result.loss_curve.append([result.steps, round(float(np.mean(window)), 6)])
                window = []
            now = time.monotonic()
            if now - last_report >= REPORT_EVERY_S or result.steps == total:
                last_report = now
                latest = result.loss_curve[-1][1] if result.loss_curve and not window else float(np.mean(window))
                ctx.progress(result.steps / total, {
                    "loss": round(latest, 6), "step": result.steps, "steps": total,
                    "epoch": round(micro / per_epoch, 3), "lr": float(schedule.get_last_lr()[0]),
                })  # fmt: skip
            if held_out is not None and (result.steps % eval_every == 0 or result.steps == total):
                value = evaluate_loss(loss_fn, held_out, spec, device, modules)
                result.eval_curve.append([result.steps, round(value, 6)])
                if result.best_eval_loss is None or value < result.best_eval_loss - 1e-6:
                    result.best_eval_loss = round(value, 6)
                    bad_evals = 0
                    if spec.early_stopping_patience:
                        best_state = [p.detach().clone() for p in params]
                else:
                    bad_evals += 1
                    if spec.early_stopping_patience and bad_evals >= spec.early_stopping_patience:
                        result.stopped_early = True
                        break
            if result.steps >= total:
                break
        if result.stopped_early:
            break
    if best_state is not None:
        with torch.no_grad():
            for param, best in zip(params, best_state, strict=True):
                param.copy_(best)
    for module in modules:
        set_mode(module, False)
    result.seconds = time.monotonic() - started
    result.epochs = micro / per_epoch
    result.step_time_ms = 1000 * result.seconds / max(1, result.steps)
    if device.type == "cuda":
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    else:
        result.peak_memory_bytes = max(0, peak_rss - rss0)
    return result


def evaluate_loss(loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], data: TrainData,
                  spec: TrainingConfig, device: torch.device, modules: list[nn.Module]) -> float:
    """Mean loss over `data` in eval mode, without gradients; the modules go back to train mode."""
    for module in modules:
        set_mode(module, False)
    total, count = 0.0, 0
    with torch.no_grad(), autocast(spec, device):
        for index in data.batches(max(spec.batch_size, 64)):
            total += float(loss_fn(data.batch(index, device))) * len(index)
            count += len(index)
    for module in modules:
        set_mode(module, True)
    return total / max(count, 1)


def predict(forward: Callable[[dict[str, torch.Tensor]], torch.Tensor], data: TrainData, device: torch.device,
            batch_size: int = 64) -> np.ndarray:
    """First outputs of `forward` over all rows, as float32 numpy (eval mode is the caller's job)."""
    outputs = []
    with torch.no_grad():
        for index in data.batches(batch_size):
            batch = {k: v for k, v in data.batch(index, device).items() if k != "labels"}
            outputs.append(forward(batch).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def trainable_counts(module: nn.Module) -> dict[str, Any]:
    """Trainable parameters: count, total and fraction (of all parameters, adapters included)."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"trainable_parameters": int(trainable), "total_parameters": int(total),
            "trainable_fraction": round(trainable / max(total, 1), 6)}
