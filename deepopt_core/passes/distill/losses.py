"""Distillation losses, the teacher as a target source, hidden-state taps and input augmentations.

* Soft targets: ``T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al., 2015,
  https://arxiv.org/abs/1503.02531) on classifier outputs; a (masked) MSE on other outputs.
* Hidden states: an MSE between each student layer and its teacher layer after a learned projection (a Linear,
  or a 1x1 convolution for feature maps; identity at the start when the widths agree), as FitNets (Romero et
  al., 2015, https://arxiv.org/abs/1412.6550) and TinyBERT (Jiao et al., 2020, https://arxiv.org/abs/1909.10351).
* Attention maps: an MSE between attention probabilities of paired layers (TinyBERT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepopt_core.formats.torch_common import is_script
from deepopt_core.passes.finetune.modules import leaf_names


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """KD loss on classifier outputs (2-D, several classes); else an MSE (over unmasked tokens, plus one minus the
    cosine of the mean-pooled rows for token outputs)."""
    student, teacher = student.float(), teacher.float()
    if student.dim() == 2 and student.shape[1] > 1:
        return F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                        reduction="batchmean") * temperature**2
    if mask is not None and student.dim() == 3:
        weights = mask.unsqueeze(-1).to(student.dtype)
        mse = ((student - teacher) ** 2 * weights).sum() / (weights.sum() * student.shape[-1]).clamp_min(1)
        # Token outputs are usually pooled into one vector per row (sentence embeddings): match those in angle too.
        pooled_s = (student * weights).sum(1) / weights.sum(1).clamp_min(1)
        pooled_t = (teacher * weights).sum(1) / weights.sum(1).clamp_min(1)
        return mse + (1 - F.cosine_similarity(pooled_s, pooled_t, dim=-1)).mean()
    return F.mse_loss(student, teacher)


def layer_pairs(student_layers: int, teacher_layers: int, kept: list[int] | None = None) -> list[tuple[int, int]]:
    """(student, teacher) layer indices: the kept teacher layers, else uniformly by relative depth."""
    if kept is not None and len(kept) == student_layers:
        return list(enumerate(kept))
    return [(j, max(0, round((j + 1) * teacher_layers / student_layers) - 1)) for j in range(student_layers)]


class Projection(nn.Module):
    """Student feature -> teacher feature width: Linear on the last axis, 1x1 conv on channels of maps."""

    def __init__(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        super().__init__()
        self.maps = student.dim() == 4
        s_width, t_width = (student.shape[1], teacher.shape[1]) if self.maps else (student.shape[-1],
                                                                                   teacher.shape[-1])
        self.layer: nn.Module = nn.Conv2d(s_width, t_width, 1) if self.maps else nn.Linear(s_width, t_width)
        if s_width == t_width:
            with torch.no_grad():
                weight = self.layer.weight
                weight.zero_()
                weight.view(t_width, s_width)[range(t_width), range(t_width)] = 1.0
                self.layer.bias.zero_()  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.float())


def hidden_mse(projection: nn.Module, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    projected = projection(student)
    teacher = teacher.float()
    if projected.dim() == 4 and projected.shape[2:] != teacher.shape[2:]:
        teacher = F.adaptive_avg_pool2d(teacher, projected.shape[2:])
    return F.mse_loss(projected, teacher)


class Taps:
    """Hidden features of a non-Hugging-Face module: the outputs of its Linear/Conv layers but the last, caught
    with forward hooks (a lifted torch.export program or an eager module; TorchScript takes no hooks)."""

    def __init__(self, module: nn.Module) -> None:
        self.names = [] if is_script(module) else leaf_names(module)[:-1]
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [module.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.values[name] = output

        return hook

    def take(self) -> list[torch.Tensor]:
        values = [self.values[n] for n in self.names if n in self.values]
        self.values = {}
        return values

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def augmenter(kinds: Sequence[str], seed: int, mask_id: int | None) -> Callable[[dict[str, torch.Tensor]],
                                                                             dict[str, torch.Tensor]] | None:
    """A function that augments a training batch in place of the original (the teacher labels the result)."""
    if not kinds:
        return None
    generator = torch.Generator().manual_seed(seed + 1)

    def augment(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        for name, value in batch.items():
            if name == "labels":
                continue
            if value.is_floating_point():
                if "shift" in kinds and value.dim() == 4:
                    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
                    value = torch.roll(value, shifts=(dy, dx), dims=(2, 3))
                    if dy:
                        value[:, :, 0 if dy > 0 else -1, :] = 0
                    if dx:
                        value[:, :, :, 0 if dx > 0 else -1] = 0
                if "noise" in kinds:
                    noise = torch.randn(value.shape, generator=generator).to(value.device)
                    value = value + 0.1 * value.std() * noise
            elif name == "input_ids" and "token_mask" in kinds and mask_id is not None:
                chosen = torch.rand(value.shape, generator=generator).to(value.device) < 0.15
                chosen &= batch.get("attention_mask", torch.ones_like(value)).bool()
                chosen[:, 0] = False
                value = torch.where(chosen, torch.full_like(value, mask_id), value)
            out[name] = value
        if "mixup" in kinds:
            rows = len(next(iter(batch.values())))
            lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator))).beta(0.4, 0.4))
            perm = torch.randperm(rows, generator=generator)
            for name, value in out.items():
                if name != "labels" and value.is_floating_point():
                    out[name] = lam * value + (1 - lam) * value[perm.to(value.device)]
            out["_mix_lambda"] = torch.tensor(lam)
            out["_mix_perm"] = perm
        return out

    return augment


def label_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on labels (mixed like the inputs after mixup)."""
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float(), labels)
    if "_mix_lambda" in batch:
        lam = float(batch["_mix_lambda"])
        loss = lam * loss + (1 - lam) * F.cross_entropy(logits.float(), labels[batch["_mix_perm"].to(labels.device)])
    return loss
