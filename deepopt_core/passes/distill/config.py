"""Config of the `distill` pass. No heavy imports (the API validates job specs with it)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from deepopt_core.passes.base import SubmitContext
from deepopt_core.passes.finetune.config import Problems, TrainingConfig
from deepopt_core.passes.prune.layouts import BERT_FAMILY, FFN_MODEL_TYPES

# Hugging Face model types whose students `width_ratio` derives (the rest: a .pt2 upload, or a student model).
WIDTH_MODEL_TYPES = BERT_FAMILY | FFN_MODEL_TYPES

TORCH_FORMATS = ("torchscript", "torch_export", "hf")


class StudentConfig(BaseModel):
    """The student: another uploaded model (`model_id`), or one derived from the teacher.

    * `keep_every: k` keeps every k-th layer of a transformer encoder (Hugging Face BERT family, or the largest
      stack of identical blocks of a plain torch encoder), initialised from the teacher's layers as DistilBERT
      (Sanh et al., 2019, https://arxiv.org/abs/1910.01108); the last layer is always kept.
    * `width_ratio: w` keeps the fraction w of the hidden and feed-forward units of a BERT-family model with a
      task head, of the feed-forward units of other transformers (ViT, Llama, Qwen2, Mistral, DistilBERT, and a
      headless encoder, whose hidden size stays), or of the channels and neurons of a CNN/MLP program (through
      BatchNorms and depthwise convs; residual streams stay whole), choosing the most important units (weight
      norms, as Li et al., 2017, https://arxiv.org/abs/1608.08710) and starting from their weights.

    Both may be combined; `init: random` re-initialises the derived student (training from scratch).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str | None = Field(None, description="An uploaded PyTorch model (same inputs and outputs).")
    keep_every: int | None = Field(None, ge=2, le=64, description="Keep every k-th encoder layer.")
    width_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="Keep this fraction of units.")
    init: Literal["teacher", "random"] = Field("teacher", description="Start a derived student from the "
                                               "teacher's weights, or from a fresh initialisation.")

    @model_validator(mode="after")
    def _one_kind(self) -> StudentConfig:
        derived = self.keep_every is not None or self.width_ratio is not None
        if self.model_id is not None and derived:
            raise ValueError("give either model_id or keep_every/width_ratio, not both")
        if self.model_id is None and not derived:
            raise ValueError("give model_id, keep_every or width_ratio")
        return self


class TeacherConfig(BaseModel):
    """Another uploaded model as the teacher (ONNX, run with ONNX Runtime, or PyTorch); default: the job's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(..., description="An uploaded model: ONNX (run with ONNX Runtime) or PyTorch.")


class DistillConfig(TrainingConfig):
    """Knowledge distillation (Hinton et al., 2015, https://arxiv.org/abs/1503.02531) into a smaller student.

    The loss is ``(1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + alpha * CE(student,
    labels)`` for classifier outputs (CE only when the training data has labels, else alpha counts as 0); for
    other outputs (hidden states, embeddings) an MSE on the first output replaces the KL term. Optional terms:
    `hidden_loss` weights an MSE between student and teacher hidden states after a learned linear projection
    (FitNets, Romero et al., 2015, https://arxiv.org/abs/1412.6550; TinyBERT, Jiao et al., 2020,
    https://arxiv.org/abs/1909.10351), `attention_loss` an MSE between attention maps (TinyBERT; Hugging Face
    encoders with the same head count). A student that comes in pruned keeps its zeros while it trains (as oBERT,
    Kurtic et al., 2022, https://arxiv.org/abs/2203.07259, distils a pruned model from the dense one).
    """

    type: Literal["distill"] = Field("distill", description="The pass: `distill`.")
    student: StudentConfig | None = Field(
        None, description="None: the model as the passes before left it (a pruned model), the original teaching.")
    teacher: TeacherConfig | None = Field(None, description="None: the uploaded model of the job.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature of the soft targets.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the cross-entropy on labels.")
    hidden_loss: float = Field(0.0, ge=0, le=1000, description="Weight of the hidden-state MSE (0: off).")
    attention_loss: float = Field(0.0, ge=0, le=1000, description="Weight of the attention-map MSE (0: off).")
    max_steps: int | None = Field(None, ge=1, le=1_000_000, validation_alias=AliasChoices("steps", "max_steps"),
                                  description="Optimizer steps (`steps` is accepted too).")
    augment: list[Literal["noise", "shift", "mixup", "token_mask"]] = Field(
        default_factory=list, description="Input augmentations of the transfer set: gaussian `noise` (float "
        "inputs), random one-pixel `shift` (N, C, H, W inputs), `mixup` of input pairs (Zhang et al., 2018), "
        "`token_mask` (15% of tokens to [MASK]); the teacher labels each augmented batch.")
    preserve_sparsity: bool = Field(True, description="Keep a pruned student's zeros at zero.")

    def referenced_models(self) -> list[str]:
        ids = [self.student.model_id if self.student else None, self.teacher.model_id if self.teacher else None]
        return [i for i in ids if i]

    def check(self, context: SubmitContext) -> Problems:
        """Submit-time checks: training data, a student smaller than its teacher, models that fit each other."""
        problems = self._training_problems(context, needs_labels=False)
        teacher = context.model
        if self.teacher is not None:
            found = context.models.get(self.teacher.model_id)
            if found is None:
                problems.append((("teacher", "model_id"), "no such model"))
            else:
                teacher = found
        if self.student is not None and self.student.model_id is not None:
            student = context.models.get(self.student.model_id)
            if student is None:
                problems.append((("student", "model_id"), "no such model"))
            else:
                problems.extend(_pair_problems(student, teacher, ("student", "model_id")))
        elif self.student is not None and context.model.get("format") == "torchscript":
            problems.append((("student",), "a TorchScript model cannot be restructured into a student; upload a "
                             ".pt2 or Hugging Face model, or give student.model_id"))
        elif self.student is not None and self.student.width_ratio is not None and \
                context.model.get("format") == "hf" and _model_type(context.model) not in WIDTH_MODEL_TYPES:
            problems.append((("student", "width_ratio"), "width_ratio narrows the encoders of "
                             f"{sorted(BERT_FAMILY)} and the feed-forward blocks of {sorted(FFN_MODEL_TYPES)}, not a "
                             f"Hugging Face {_model_type(context.model)!r} model; give student.model_id, or upload "
                             "the model as a .pt2 (torch.export), whose Linear/Conv chains are narrowed"))
        elif self.student is not None and self.student.keep_every and context.model.get("format") == "torch_export":
            problems.append((("student", "keep_every"), "keep_every needs a Hugging Face encoder; a torch.export "
                             "program calls its layers by name (use width_ratio or student.model_id)"))
        if self.attention_loss and teacher.get("format") != "hf":
            problems.append((("attention_loss",), "attention maps come from Hugging Face teachers only"))
        if self.teacher is not None and self.student is None and teacher is not context.model:
            # The job's model is the student here.
            problems.extend(_pair_problems(context.model, teacher, ("student",)))
        return problems


def _model_type(model: dict) -> str | None:
    details = model.get("details")
    return details.get("model_type") if isinstance(details, dict) else None


def _pair_problems(student: dict, teacher: dict, field: tuple[str, ...]) -> Problems:
    problems: Problems = []
    if student.get("format") not in TORCH_FORMATS:
        problems.append((field, "the student must be a PyTorch model (TorchScript, .pt2 or Hugging Face) to be "
                         "trained"))
    s_params, t_params = int(student.get("num_parameters") or 0), int(teacher.get("num_parameters") or 0)
    if s_params and t_params and s_params >= t_params:
        problems.append((field, f"the student ({s_params:,} parameters) is not smaller than the teacher "
                         f"({t_params:,})"))
    s_inputs = [t.get("name") for t in student.get("inputs", [])]
    t_inputs = [t.get("name") for t in teacher.get("inputs", [])]
    if s_inputs and t_inputs and not set(s_inputs) <= set(t_inputs) | {"token_type_ids"}:
        problems.append((field, f"the student's inputs {s_inputs} are not the teacher's {t_inputs}"))
    return problems
