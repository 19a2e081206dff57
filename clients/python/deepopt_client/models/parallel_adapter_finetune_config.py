from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.parallel_adapter_finetune_config_device import ParallelAdapterFinetuneConfigDevice
from ..models.parallel_adapter_finetune_config_head import ParallelAdapterFinetuneConfigHead
from ..models.parallel_adapter_finetune_config_mixed_precision import ParallelAdapterFinetuneConfigMixedPrecision
from ..models.parallel_adapter_finetune_config_task import ParallelAdapterFinetuneConfigTask
from ..types import UNSET, Unset

T = TypeVar("T", bound="ParallelAdapterFinetuneConfig")


@_attrs_define
class ParallelAdapterFinetuneConfig:
    """Bottleneck adapters as compared in LLM-Adapters (Hu et al., 2023, https://arxiv.org/abs/2304.01933):
    `adapter_series` after a layer's output (Houlsby et al., 2019, https://arxiv.org/abs/1902.00751),
    `adapter_parallel` beside it (He et al., 2022, https://arxiv.org/abs/2110.04366). They cannot be merged into
    the weights: the model outputs carry them.

        Attributes:
            type_ (Literal['finetune']): The pass: `finetune`; `method` selects the variant. Default: 'finetune'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            epochs (int | None | Unset): Passes over the training data (default 3).
            max_steps (int | None | Unset): Stop after this many optimizer steps.
            lr (float | None | Unset): Peak learning rate of AdamW; default per method.
            batch_size (int | Unset): Rows per forward pass. Default: 32.
            weight_decay (float | Unset): AdamW's decoupled weight decay. Default: 0.0.
            warmup_ratio (float | Unset): Linear warm-up share of the steps, then linear decay. Default: 0.0.
            gradient_accumulation_steps (int | Unset): Batches whose gradients add up to one optimizer step (a larger
                effective batch in the same memory). Default: 1.
            mixed_precision (ParallelAdapterFinetuneConfigMixedPrecision | Unset): Autocast dtype of forward passes (fp16
                uses a gradient scaler). Default: ParallelAdapterFinetuneConfigMixedPrecision.NO.
            gradient_checkpointing (bool | Unset): Recompute activations in backward (HF models). Default: False.
            early_stopping_patience (int | None | Unset): Stop after this many evaluations on the held-out split without a
                better loss, and keep the best weights; None trains to the end.
            validation_split (float | Unset): Share of the training rows held out. Default: 0.1.
            eval_every (int | None | Unset): Optimizer steps between held-out evaluations (default: about 10 per run).
            max_grad_norm (float | None | Unset): Clip gradients to this global norm. Default: 1.0.
            max_length (int | Unset): Token limit when tokenizing .jsonl text. Default: 128.
            seed (int | Unset): Seed of the held-out split, the shuffling and any new weights. Default: 0.
            device (ParallelAdapterFinetuneConfigDevice | Unset): Where to train; auto: cuda when present. Default:
                ParallelAdapterFinetuneConfigDevice.AUTO.
            task (ParallelAdapterFinetuneConfigTask | Unset): auto: regression for float `labels` in .npz, classification
                otherwise. Default: ParallelAdapterFinetuneConfigTask.AUTO.
            num_labels (int | None | Unset): Classes (default: from the data).
            head (ParallelAdapterFinetuneConfigHead | Unset): Hugging Face models: `new` puts a fresh
                classification/regression head on the base; `auto` keeps a head that fits the labels and adds one otherwise.
                Default: ParallelAdapterFinetuneConfigHead.AUTO.
            pad_token_id (int | None | Unset): Hugging Face decoders (GPT-2, Llama, Qwen2): the token id that pads the rows,
                for a classification head that reads each row's last other token; default the model's pad token, else its end-
                of-sequence token.
            bottleneck_size (int | Unset): Width of the down-projection. Default: 64.
            scaling (float | Unset): Factor on the adapter's output (parallel adapters). Default: 1.0.
            target_modules (list[str] | None | Unset): Linear layers to adapt; default per architecture.
            method (Literal['adapter_parallel'] | Unset): Bottleneck adapters beside layers. Default: 'adapter_parallel'.
    """

    type_: Literal["finetune"] = "finetune"
    version: int | Unset = 1
    epochs: int | None | Unset = UNSET
    max_steps: int | None | Unset = UNSET
    lr: float | None | Unset = UNSET
    batch_size: int | Unset = 32
    weight_decay: float | Unset = 0.0
    warmup_ratio: float | Unset = 0.0
    gradient_accumulation_steps: int | Unset = 1
    mixed_precision: ParallelAdapterFinetuneConfigMixedPrecision | Unset = (
        ParallelAdapterFinetuneConfigMixedPrecision.NO
    )
    gradient_checkpointing: bool | Unset = False
    early_stopping_patience: int | None | Unset = UNSET
    validation_split: float | Unset = 0.1
    eval_every: int | None | Unset = UNSET
    max_grad_norm: float | None | Unset = 1.0
    max_length: int | Unset = 128
    seed: int | Unset = 0
    device: ParallelAdapterFinetuneConfigDevice | Unset = ParallelAdapterFinetuneConfigDevice.AUTO
    task: ParallelAdapterFinetuneConfigTask | Unset = ParallelAdapterFinetuneConfigTask.AUTO
    num_labels: int | None | Unset = UNSET
    head: ParallelAdapterFinetuneConfigHead | Unset = ParallelAdapterFinetuneConfigHead.AUTO
    pad_token_id: int | None | Unset = UNSET
    bottleneck_size: int | Unset = 64
    scaling: float | Unset = 1.0
    target_modules: list[str] | None | Unset = UNSET
    method: Literal["adapter_parallel"] | Unset = "adapter_parallel"

    def to_dict(self) -> dict[str, Any]:
        type_ = self.type_

        version = self.version

        epochs: int | None | Unset
        if isinstance(self.epochs, Unset):
            epochs = UNSET
        else:
            epochs = self.epochs

        max_steps: int | None | Unset
        if isinstance(self.max_steps, Unset):
            max_steps = UNSET
        else:
            max_steps = self.max_steps

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

        task: str | Unset = UNSET
        if not isinstance(self.task, Unset):
            task = self.task.value

        num_labels: int | None | Unset
        if isinstance(self.num_labels, Unset):
            num_labels = UNSET
        else:
            num_labels = self.num_labels

        head: str | Unset = UNSET
        if not isinstance(self.head, Unset):
            head = self.head.value

        pad_token_id: int | None | Unset
        if isinstance(self.pad_token_id, Unset):
            pad_token_id = UNSET
        else:
            pad_token_id = self.pad_token_id

        bottleneck_size = self.bottleneck_size

        scaling = self.scaling

        target_modules: list[str] | None | Unset
        if isinstance(self.target_modules, Unset):
            target_modules = UNSET
        elif isinstance(self.target_modules, list):
            target_modules = self.target_modules

        else:
            target_modules = self.target_modules

        method = self.method

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
        if max_steps is not UNSET:
            field_dict["max_steps"] = max_steps
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
        if task is not UNSET:
            field_dict["task"] = task
        if num_labels is not UNSET:
            field_dict["num_labels"] = num_labels
        if head is not UNSET:
            field_dict["head"] = head
        if pad_token_id is not UNSET:
            field_dict["pad_token_id"] = pad_token_id
        if bottleneck_size is not UNSET:
            field_dict["bottleneck_size"] = bottleneck_size
        if scaling is not UNSET:
            field_dict["scaling"] = scaling
        if target_modules is not UNSET:
            field_dict["target_modules"] = target_modules
        if method is not UNSET:
            field_dict["method"] = method

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        type_ = cast(Literal["finetune"], d.pop("type"))
        if type_ != "finetune":
            raise ValueError(f"type must match const 'finetune', got '{type_}'")

        version = d.pop("version", UNSET)

        def _parse_epochs(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        epochs = _parse_epochs(d.pop("epochs", UNSET))

        def _parse_max_steps(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        max_steps = _parse_max_steps(d.pop("max_steps", UNSET))

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
        mixed_precision: ParallelAdapterFinetuneConfigMixedPrecision | Unset
        if isinstance(_mixed_precision, Unset):
            mixed_precision = UNSET
        else:
            mixed_precision = ParallelAdapterFinetuneConfigMixedPrecision(_mixed_precision)

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
        device: ParallelAdapterFinetuneConfigDevice | Unset
        if isinstance(_device, Unset):
            device = UNSET
        else:
            device = ParallelAdapterFinetuneConfigDevice(_device)

        _task = d.pop("task", UNSET)
        task: ParallelAdapterFinetuneConfigTask | Unset
        if isinstance(_task, Unset):
            task = UNSET
        else:
            task = ParallelAdapterFinetuneConfigTask(_task)

        def _parse_num_labels(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        num_labels = _parse_num_labels(d.pop("num_labels", UNSET))

        _head = d.pop("head", UNSET)
        head: ParallelAdapterFinetuneConfigHead | Unset
        if isinstance(_head, Unset):
            head = UNSET
        else:
            head = ParallelAdapterFinetuneConfigHead(_head)

        def _parse_pad_token_id(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        pad_token_id = _parse_pad_token_id(d.pop("pad_token_id", UNSET))

        bottleneck_size = d.pop("bottleneck_size", UNSET)

        scaling = d.pop("scaling", UNSET)

        def _parse_target_modules(data: object) -> list[str] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                target_modules_type_0 = cast(list[str], data)

                return target_modules_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[str] | None | Unset, data)

        target_modules = _parse_target_modules(d.pop("target_modules", UNSET))

        method = cast(Literal["adapter_parallel"] | Unset, d.pop("method", UNSET))
        if method != "adapter_parallel" and not isinstance(method, Unset):
            raise ValueError(f"method must match const 'adapter_parallel', got '{method}'")

        parallel_adapter_finetune_config = cls(
            type_=type_,
            version=version,
            epochs=epochs,
            max_steps=max_steps,
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
            task=task,
            num_labels=num_labels,
            head=head,
            pad_token_id=pad_token_id,
            bottleneck_size=bottleneck_size,
            scaling=scaling,
            target_modules=target_modules,
            method=method,
        )

        return parallel_adapter_finetune_config
