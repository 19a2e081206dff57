"""The `distill` pass: train a smaller student on the teacher's outputs over the uploaded training data.

The teacher is the job's uploaded model (or `teacher.model_id`): a PyTorch model, or an ONNX model run with ONNX
Runtime for its targets. The student is another uploaded PyTorch model, one derived from the incoming model
(:mod:`deepopt_core.passes.distill.students`), or the incoming model itself (after `prune`: the pruned model
learns from the dense original, keeping its zeros). It trains in torch
(:func:`deepopt_core.passes.finetune.training.train`) and the pipeline exports it to every requested output.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from deepopt_core.errors import PassFailed
from deepopt_core.evaluate.metrics import compare
from deepopt_core.formats.torch_common import prunable_params, unwrap
from deepopt_core.passes.context import ModelHandle, PassContext
from deepopt_core.passes.distill import losses as L
from deepopt_core.passes.distill.config import DistillConfig
from deepopt_core.passes.distill.students import derive
from deepopt_core.passes.finetune.config import describe
from deepopt_core.passes.finetune.modules import check_trainable, is_hf, lift, rewrap, set_mode, write_config
from deepopt_core.passes.finetune.training import TrainData, load_train_data, train, training_device

log = logging.getLogger("deepopt.passes.distill")
REUSE_ACROSS_TRACKS = True
CHECK_ROWS = 1024  # rows the before/after quality is measured on
Outputs = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]


def _first(value: Any) -> torch.Tensor:
    while isinstance(value, list | tuple):
        value = value[0]
    return value  # type: ignore[no-any-return]


class Runner:
    """Runs a teacher or student on a batch: (first output, hidden states, attention maps)."""

    def __init__(self, model: Any, names: list[str], device: torch.device, *, hidden: bool, attentions: bool):
        self.names = names
        self.session = None
        self.hf = False
        self.taps: L.Taps | None = None
        if not isinstance(model, nn.Module):  # an ONNX ModelProto
            from deepopt_core.formats.ort_session import inference_session

            self.session = inference_session(model.SerializeToString())
            self.onnx_inputs = [i.name for i in self.session.get_inputs()]
            self.module: nn.Module | None = None
            return
        self.hf = is_hf(model) or hasattr(model, "config")
        self.module = unwrap(model) if is_hf(model) else lift(model)
        self.module.to(device)
        self.hidden, self.attentions = hidden, attentions
        if hidden and not self.hf:
            self.taps = L.Taps(self.module)

    def __call__(self, batch: dict[str, torch.Tensor]) -> Outputs:
        if self.session is not None:
            feed = {n: batch[n].cpu().numpy() for n in self.onnx_inputs if n in batch}
            first = self.session.run(None, feed)[0]
            return torch.from_numpy(np.asarray(first)).to(batch[self.names[0]].device), [], []
        assert self.module is not None
        if self.hf:
            out = self.module(**{n: batch[n] for n in self.names if n in batch}, return_dict=True,
                              output_hidden_states=self.hidden, output_attentions=self.attentions)
            return (out[0], list(getattr(out, "hidden_states", None) or []),
                    list(getattr(out, "attentions", None) or []))
        first = _first(self.module(*[batch[n] for n in self.names]))
        return first, self.taps.take() if self.taps is not None else [], []

    def layers(self) -> int:
        if self.hf and self.module is not None:
            config = self.module.config  # type: ignore[union-attr]
            return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layers", 0))
        return len(self.taps.names) if self.taps is not None else 0


def _student(spec: DistillConfig, model: Any, ctx: PassContext) -> tuple[Any, dict[str, Any], ModelHandle | None]:
    if spec.student is None:
        return model, {"student": "incoming model"}, None
    if spec.student.model_id is not None:
        handle = ctx.load_model(spec.student.model_id)
        if handle.representation != "torch":
            raise PassFailed("the student must be a PyTorch model")
        return handle.model, {"student": spec.student.model_id}, handle
    core = unwrap(model)
    student, facts = derive(core, spec.student.keep_every, spec.student.width_ratio, spec.student.init,
                            spec.seed)
    facts["student"] = "derived"
    return (rewrap(model, student) if is_hf(model) else student), facts, None


def _sparsity_masks(module: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(weight, keep-mask) of the Linear/Conv layers that are more than 1% zeros (a pruned student)."""
    weights = {n: m.weight for n, m in module.named_modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)}
    if not weights:
        weights = prunable_params(module)
    return {name: (weight, weight != 0) for name, weight in weights.items()
            if float((weight == 0).float().mean()) > 0.01}


def apply_torch(spec: DistillConfig, model: Any, ctx: PassContext) -> Any:
    """Distil the teacher into the student on ``ctx.train``; returns the trained student.

    Raises:
        PassFailed: no training data, a quantized or TorchScript student that cannot be restructured, a student
            that is not smaller than the teacher, losses the models cannot give.
    """
    torch.manual_seed(spec.seed)
    device = training_device(spec.device, ctx.device)
    teacher_handle = ctx.load_model(spec.teacher.model_id) if spec.teacher else ctx.load_original()
    student_model, facts, student_handle = _student(spec, model, ctx)
    check_trainable(student_model)
    teacher_params = _count(teacher_handle.model, teacher_handle)
    student_core = unwrap(student_model) if is_hf(student_model) else lift(student_model)
    student_params = sum(p.numel() for p in student_core.parameters())
    if spec.student is not None and teacher_params and student_params >= teacher_params:
        raise PassFailed(f"the student ({student_params:,} parameters) is not smaller than the teacher "
                         f"({teacher_params:,})")
    data = load_train_data(ctx.train, ctx.info, ctx.tokenizer, max_length=spec.max_length)
    train_split, held = data.split(spec.validation_split, spec.seed)
    names = data.names
    attentions = spec.attention_loss > 0
    restore: list[tuple[Any, Any]] = []
    teacher = Runner(teacher_handle.model, names, device, hidden=spec.hidden_loss > 0, attentions=attentions)
    student = Runner(student_core, names, device, hidden=spec.hidden_loss > 0, attentions=attentions)
    if attentions:
        for runner in (teacher, student):
            if not runner.hf or runner.module is None:
                raise PassFailed("attention_loss needs Hugging Face teacher and student models")
            module: Any = runner.module
            restore.append((module, module.config._attn_implementation))
            module.set_attn_implementation("eager")
    if teacher.module is not None:
        set_mode(teacher.module, False)
    evaluation = _check_data(ctx, spec)
    check, checked_on = (evaluation, "eval") if evaluation else ((held, "held_out") if held else (train_split, "train"))
    check = check.subset(np.arange(min(check.rows, CHECK_ROWS)))
    with torch.no_grad():
        teacher_out = _predict(teacher, check, device)
        set_mode(student_core, False)
        before = _predict(student, check, device)
    masks = _sparsity_masks(student_core) if spec.preserve_sparsity and spec.student is None else {}
    kept = facts.get("kept_layers")
    projections, pairs = _projections(spec, teacher, student, train_split, device, kept)
    labelled = data.labels is not None and teacher_out.ndim == 2 and teacher_out.shape[1] > 1
    alpha = spec.alpha if labelled else 0.0

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            t_first, t_hidden, t_attn = teacher(batch)
        s_first, s_hidden, s_attn = student(batch)
        mask = batch.get("attention_mask")
        loss = (1 - alpha) * L.soft_loss(s_first, t_first, spec.temperature, mask)
        if alpha:
            loss = loss + alpha * L.label_loss(s_first, batch)
        if projections is not None:
            hidden = [L.hidden_mse(p, s_hidden[i], t_hidden[j]) for p, (i, j) in zip(projections, pairs, strict=True)]
            loss = loss + spec.hidden_loss * torch.stack(hidden).mean()
        if attentions:
            layers = L.layer_pairs(len(s_attn), len(t_attn), kept)
            loss = loss + spec.attention_loss * torch.stack(
                [nn.functional.mse_loss(s_attn[i].float(), t_attn[j].float()) for i, j in layers]).mean()
        return loss

    def after_step() -> None:
        for weight, mask in masks.values():
            weight.mul_(mask)

    for param in student_core.parameters():
        param.requires_grad_(True)
    params = [p for p in student_core.parameters() if p.requires_grad]
    if projections is not None:
        params += list(projections.parameters())
    mask_id = getattr(ctx.tokenizer, "mask_token_id", None)
    lr = spec.lr or (1e-4 if student.hf else 1e-3)
    run = train(params, loss_fn, train_split, spec, ctx, device=device, lr=lr, modules=[student_core],
                held_out=held, after_step=after_step if masks else None,
                augment=L.augmenter(spec.augment, spec.seed, mask_id))
    for restored, implementation in restore:
        restored.set_attn_implementation(implementation)
    for runner in (teacher, student):
        if runner.taps is not None:
            runner.taps.close()
    set_mode(student_core, False)
    with torch.no_grad():
        after = _predict(student, check, device)
    for param in student_core.parameters():
        param.requires_grad_(False)
    student_core.to("cpu")
    if is_hf(student_model):
        folder = student_handle.hf_folder if student_handle is not None else ctx.hf_folder
        ctx.hf_folder = write_config(student_core, folder, ctx.workdir) or ctx.hf_folder
    ctx.decisions.update({
        **facts, "teacher": spec.teacher.model_id if spec.teacher else "original",
        "teacher_runtime": "onnxruntime" if teacher.session is not None else "torch",
        "teacher_parameters": teacher_params, "student_parameters": int(student_params),
        "compression": round(teacher_params / max(student_params, 1), 3) if teacher_params else None,
        "checked_on": checked_on,
        "teacher_quality": _quality(teacher_out, check.labels), "student_before": _quality(before, check.labels),
        "student_after": _quality(after, check.labels), "fidelity_to_teacher": compare(teacher_out, after),
        "hidden_pairs": pairs if projections is not None else [], "sparsity_kept_layers": sorted(masks),
        "alpha_used": alpha, "lr": lr, "device": device.type, **run.summary(), "settings": describe(spec),
    })  # fmt: skip
    return rewrap(student_model, student_core) if is_hf(student_model) else student_core


def _count(model: Any, handle: ModelHandle) -> int:
    if isinstance(model, nn.Module):
        return int(sum(p.numel() for p in unwrap(model).parameters()))
    return int(handle.info.num_parameters or 0)


def _check_data(ctx: PassContext, spec: DistillConfig) -> TrainData | None:
    if ctx.eval is None:
        return None
    try:
        return load_train_data(ctx.eval, ctx.info, ctx.tokenizer, max_length=spec.max_length)
    except PassFailed:
        return None


def _predict(runner: Runner, data: TrainData, device: torch.device) -> np.ndarray:
    chunks = []
    for index in data.batches(64):
        batch = {k: v for k, v in data.batch(index, device).items() if k != "labels"}
        first = runner(batch)[0].float()
        if first.dim() == 3 and "attention_mask" in batch:  # token outputs: mean over real tokens
            mask = batch["attention_mask"].unsqueeze(-1).float()
            first = (first * mask).sum(1) / mask.sum(1).clamp_min(1)
        chunks.append(first.cpu().numpy())
    return np.concatenate(chunks)


def _quality(outputs: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    if labels is None or outputs.ndim != 2 or outputs.shape[1] < 2:
        return {}
    return {"accuracy": round(float((outputs.argmax(1) == labels).mean()), 6)}


def _projections(spec: DistillConfig, teacher: Runner, student: Runner, data: TrainData, device: torch.device,
                 kept: list[int] | None) -> tuple[nn.ModuleList | None, list[tuple[int, int]]]:
    """Learned projections of the paired hidden states, sized by one batch through both models."""
    if not spec.hidden_loss:
        return None, []
    batch = data.batch(np.arange(min(8, data.rows)), device)
    with torch.no_grad():
        _, t_hidden, _ = teacher(batch)
        _, s_hidden, _ = student(batch)
    if not t_hidden or not s_hidden:
        raise PassFailed("hidden_loss needs hidden states from both models (Hugging Face models, torch.export "
                         "programs or eager modules; not ONNX or TorchScript teachers)")
    if teacher.hf:  # hidden_states[0] is the embedding output; layer j is hidden_states[j + 1]
        pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in L.layer_pairs(len(s_hidden) - 1, len(t_hidden) - 1, kept)]
    else:
        pairs = L.layer_pairs(len(s_hidden), len(t_hidden))
    modules = nn.ModuleList([L.Projection(s_hidden[i], t_hidden[j]) for i, j in pairs]).to(device)
    return modules, pairs


