from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.distill_config_augment_item import DistillConfigAugmentItem
from ..models.distill_config_device import DistillConfigDevice
from ..models.distill_config_mixed_precision import DistillConfigMixedPrecision
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.student_config import StudentConfig
    from ..models.teacher_config import TeacherConfig


T = TypeVar("T", bound="DistillConfig")


@_attrs_define
class DistillConfig:
    """Knowledge distillation (Hinton et al., 2015, https://arxiv.org/abs/1503.02531) into a smaller student.

    The loss is ``(1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + alpha * CE(student,
    labels)`` for classifier outputs (CE only when the training data has labels, else alpha counts as 0); for
    other outputs (hidden states, embeddings) an MSE on the first output replaces the KL term. Optional terms:
    `hidden_loss` weights an MSE between student and teacher hidden states after a learned linear projection
    (FitNets, Romero et al., 2015, https://arxiv.org/abs/1412.6550; TinyBERT, Jiao et al., 2020,
    https://arxiv.org/abs/1909.10351), `attention_loss` an MSE between attention maps (TinyBERT; Hugging Face
    encoders with the same head count). A student that comes in pruned keeps its zeros while it trains (as oBERT,
    Kurtic et al., 2022, https://arxiv.org/abs/2203.07259, distils a pruned model from the dense one).

        Attributes:
            type_ (Literal['distill']): The pass: `distill`. Default: 'distill'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            epochs (int | None | Unset): Passes over the training data (default 3).
            steps (int | None | Unset): Optimizer steps (`steps` is accepted too).
            lr (float | None | Unset): Peak learning rate of AdamW; default per method.
            batch_size (int | Unset): Rows per forward pass. Default: 32.
            weight_decay (float | Unset): AdamW's decoupled weight decay. Default: 0.0.
            warmup_ratio (float | Unset): Linear warm-up share of the steps, then linear decay. Default: 0.0.
            gradient_accumulation_steps (int | Unset): Batches whose gradients add up to one optimizer step (a larger
                effective batch in the same memory). Default: 1.
            mixed_precision (DistillConfigMixedPrecision | Unset): Autocast dtype of forward passes (fp16 uses a gradient
                scaler). Default: DistillConfigMixedPrecision.NO.
            gradient_checkpointing (bool | Unset): Recompute activations in backward (HF models). Default: False.
            early_stopping_patience (int | None | Unset): Stop after this many evaluations on the held-out split without a
                better loss, and keep the best weights; None trains to the end.
            validation_split (float | Unset): Share of the training rows held out. Default: 0.1.
            eval_every (int | None | Unset): Optimizer steps between held-out evaluations (default: about 10 per run).
            max_grad_norm (float | None | Unset): Clip gradients to this global norm. Default: 1.0.
            max_length (int | Unset): Token limit when tokenizing .jsonl text. Default: 128.
            seed (int | Unset): Seed of the held-out split, the shuffling and any new weights. Default: 0.
            device (DistillConfigDevice | Unset): Where to train; auto: cuda when present. Default:
                DistillConfigDevice.AUTO.
            student (None | StudentConfig | Unset): None: the model as the passes before left it (a pruned model), the
                original teaching.
            teacher (None | TeacherConfig | Unset): None: the uploaded model of the job.
            temperature (float | Unset): Softmax temperature of the soft targets. Default: 4.0.
            alpha (float | Unset): Weight of the cross-entropy on labels. Default: 0.5.
            hidden_loss (float | Unset): Weight of the hidden-state MSE (0: off). Default: 0.0.
            attention_loss (float | Unset): Weight of the attention-map MSE (0: off). Default: 0.0.
            augment (list[DistillConfigAugmentItem] | Unset): Input augmentations of the transfer set: gaussian `noise`
                (float inputs), random one-pixel `shift` (N, C, H, W inputs), `mixup` of input pairs (Zhang et al., 2018),
                `token_mask` (15% of tokens to [MASK]); the teacher labels each augmented batch.
            preserve_sparsity (bool | Unset): Keep a pruned student's zeros at zero. Default: True.
    """

    type_: Literal["distill"] = "distill"
    version: int | Unset = 1
    epochs: int | None | Unset = UNSET
    steps: int | None | Unset = UNSET
    lr: float | None | Unset = UNSET
    batch_size: int | Unset = 32
    weight_decay: float | Unset = 0.0
    warmup_ratio: float | Unset = 0.0
    gradient_accumulation_steps: int | Unset = 1
    mixed_precision: DistillConfigMixedPrecision | Unset = DistillConfigMixedPrecision.NO
    gradient_checkpointing: bool | Unset = False
    early_stopping_patience: int | None | Unset = UNSET
    validation_split: float | Unset = 0.1
    eval_every: int | None | Unset = UNSET
    max_grad_norm: float | None | Unset = 1.0
    max_length: int | Unset = 128
    seed: int | Unset = 0
    device: DistillConfigDevice | Unset = DistillConfigDevice.AUTO
    student: None | StudentConfig | Unset = UNSET
    teacher: None | TeacherConfig | Unset = UNSET
    temperature: float | Unset = 4.0
    alpha: float | Unset = 0.5
    hidden_loss: float | Unset = 0.0
    attention_loss: float | Unset = 0.0
    augment: list[DistillConfigAugmentItem] | Unset = UNSET
    preserve_sparsity: bool | Unset = True

    def to_dict(self) -> dict[str, Any]:
        from ..models.student_config import StudentConfig  # noqa: PLC0415
        from ..models.teacher_config import TeacherConfig  # noqa: PLC0415

        type_ = self.type_

        version = self.version

        epochs: int | None | Unset
        if isinstance(self.epochs, Unset):
            epochs = UNSET
        else:
            epochs = self.epochs

        steps: int | None | Unset
        if isinstance(self.steps, Unset):
            steps = UNSET
        else:
            steps = self.steps

        lr: float | None | Unset
        if isinstance(self.lr, Unset):
            lr = UNSET
        else:
            lr = self.lr

        batch_size = self.batch_size

        weight_decay = self.weight_decay

        warmup_ratio = self.warmup_ratio

        gradient_accumulation_steps = self.gradient_accumulation_steps

        mixed_precision: str | Unset = UNSET
        if not isinstance(self.mixed_precision, Unset):
            mixed_precision = self.mixed_precision.value

        gradient_checkpointing = self.gradient_checkpointing

        early_stopping_patience: int | None | Unset
        if isinstance(self.early_stopping_patience, Unset):
            early_stopping_patience = UNSET
        else:
            early_stopping_patience = self.early_stopping_patience

        validation_split = self.validation_split

        eval_every: int | None | Unset
        if isinstance(self.eval_every, Unset):
            eval_every = UNSET
        else:
            eval_every = self.eval_every

        max_grad_norm: float | None | Unset
        if isinstance(self.max_grad_norm, Unset):
            max_grad_norm = UNSET
        else:
            max_grad_norm = self.max_grad_norm

        max_length = self.max_length

        seed = self.seed

        device: str | Unset = UNSET
        if not isinstance(self.device, Unset):
            device = self.device.value

        student: dict[str, Any] | None | Unset
        if isinstance(self.student, Unset):
            student = UNSET
        elif isinstance(self.student, StudentConfig):
            student = self.student.to_dict()
        else:
            student = self.student

        teacher: dict[str, Any] | None | Unset
        if isinstance(self.teacher, Unset):
            teacher = UNSET
        elif isinstance(self.teacher, TeacherConfig):
            teacher = self.teacher.to_dict()
        else:
            teacher = self.teacher

        temperature = self.temperature

        alpha = self.alpha

        hidden_loss = self.hidden_loss

        attention_loss = self.attention_loss

        augment: list[str] | Unset = UNSET
        if not isinstance(self.augment, Unset):
            augment = []
            for augment_item_data in self.augment:
                augment_item = augment_item_data.value
                augment.append(augment_item)

        preserve_sparsity = self.preserve_sparsity

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "type": type_,
            }
        )
        if version is not UNSET:
            field_dict["version"] = version
        if epochs is not UNSET:
            field_dict["epochs"] = epochs
        if steps is not UNSET:
            field_dict["steps"] = steps
        if lr is not UNSET:
            field_dict["lr"] = lr
        if batch_size is not UNSET:
            field_dict["batch_size"] = batch_size
        if weight_decay is not UNSET:
            field_dict["weight_decay"] = weight_decay
        if warmup_ratio is not UNSET:
            field_dict["warmup_ratio"] = warmup_ratio
        if gradient_accumulation_steps is not UNSET:
            field_dict["gradient_accumulation_steps"] = gradient_accumulation_steps
        if mixed_precision is not UNSET:
            field_dict["mixed_precision"] = mixed_precision
        if gradient_checkpointing is not UNSET:
            field_dict["gradient_checkpointing"] = gradient_checkpointing
        if early_stopping_patience is not UNSET:
            field_dict["early_stopping_patience"] = early_stopping_patience
        if validation_split is not UNSET:
            field_dict["validation_split"] = validation_split
        if eval_every is not UNSET:
            field_dict["eval_every"] = eval_every
        if max_grad_norm is not UNSET:
            field_dict["max_grad_norm"] = max_grad_norm
        if max_length is not UNSET:
            field_dict["max_length"] = max_length
        if seed is not UNSET:
            field_dict["seed"] = seed
        if device is not UNSET:
            field_dict["device"] = device
        if student is not UNSET:
            field_dict["student"] = student
        if teacher is not UNSET:
            field_dict["teacher"] = teacher
        if temperature is not UNSET:
            field_dict["temperature"] = temperature
        if alpha is not UNSET:
            field_dict["alpha"] = alpha
        if hidden_loss is not UNSET:
            field_dict["hidden_loss"] = hidden_loss
        if attention_loss is not UNSET:
            field_dict["attention_loss"] = attention_loss
        if augment is not UNSET:
            field_dict["augment"] = augment
        if preserve_sparsity is not UNSET:
            field_dict["preserve_sparsity"] = preserve_sparsity

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.student_config import StudentConfig  # noqa: PLC0415
        from ..models.teacher_config import TeacherConfig  # noqa: PLC0415

        d = dict(src_dict)
        type_ = cast(Literal["distill"], d.pop("type"))
        if type_ != "distill":
            raise ValueError(f"type must match const 'distill', got '{type_}'")

        version = d.pop("version", UNSET)

        def _parse_epochs(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        epochs = _parse_epochs(d.pop("epochs", UNSET))

        def _parse_steps(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        steps = _parse_steps(d.pop("steps", UNSET))

        def _parse_lr(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        lr = _parse_lr(d.pop("lr", UNSET))

        batch_size = d.pop("batch_size", UNSET)

        weight_decay = d.pop("weight_decay", UNSET)

        warmup_ratio = d.pop("warmup_ratio", UNSET)

        gradient_accumulation_steps = d.pop("gradient_accumulation_steps", UNSET)

        _mixed_precision = d.pop("mixed_precision", UNSET)
        mixed_precision: DistillConfigMixedPrecision | Unset
        if isinstance(_mixed_precision, Unset):
            mixed_precision = UNSET
        else:
            mixed_precision = DistillConfigMixedPrecision(_mixed_precision)

        gradient_checkpointing = d.pop("gradient_checkpointing", UNSET)

        def _parse_early_stopping_patience(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        early_stopping_patience = _parse_early_stopping_patience(d.pop("early_stopping_patience", UNSET))

        validation_split = d.pop("validation_split", UNSET)

        def _parse_eval_every(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        eval_every = _parse_eval_every(d.pop("eval_every", UNSET))

        def _parse_max_grad_norm(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        max_grad_norm = _parse_max_grad_norm(d.pop("max_grad_norm", UNSET))

        max_length = d.pop("max_length", UNSET)

        seed = d.pop("seed", UNSET)

        _device = d.pop("device", UNSET)
        device: DistillConfigDevice | Unset
        if isinstance(_device, Unset):
            device = UNSET
        else:
            device = DistillConfigDevice(_device)

        def _parse_student(data: object) -> None | StudentConfig | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                student_type_0 = StudentConfig.from_dict(data)

                return student_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | StudentConfig | Unset, data)

        student = _parse_student(d.pop("student", UNSET))

        def _parse_teacher(data: object) -> None | TeacherConfig | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                teacher_type_0 = TeacherConfig.from_dict(data)

                return teacher_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | TeacherConfig | Unset, data)

        teacher = _parse_teacher(d.pop("teacher", UNSET))

        temperature = d.pop("temperature", UNSET)

        alpha = d.pop("alpha", UNSET)

        hidden_loss = d.pop("hidden_loss", UNSET)

        attention_loss = d.pop("attention_loss", UNSET)

        _augment = d.pop("augment", UNSET)
        augment: list[DistillConfigAugmentItem] | Unset = UNSET
        if _augment is not UNSET:
            augment = []
            for augment_item_data in _augment:
                augment_item = DistillConfigAugmentItem(augment_item_data)

                augment.append(augment_item)

        preserve_sparsity = d.pop("preserve_sparsity", UNSET)

        distill_config = cls(
            type_=type_,
            version=version,
            epochs=epochs,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            gradient_accumulation_steps=gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing,
            early_stopping_patience=early_stopping_patience,
            validation_split=validation_split,
            eval_every=eval_every,
            max_grad_norm=max_grad_norm,
            max_length=max_length,
            seed=seed,
            device=device,
            student=student,
            teacher=teacher,
            temperature=temperature,
            alpha=alpha,
            hidden_loss=hidden_loss,
            attention_loss=attention_loss,
            augment=augment,
            preserve_sparsity=preserve_sparsity,
        )

        return distill_config
