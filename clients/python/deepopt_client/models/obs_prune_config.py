from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.obs_prune_config_hessian import ObsPruneConfigHessian
from ..models.obs_prune_config_scope import ObsPruneConfigScope
from ..models.obs_prune_config_update import ObsPruneConfigUpdate
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.fine_tune_settings import FineTuneSettings
    from ..models.schedule import Schedule


T = TypeVar("T", bound="ObsPruneConfig")


@_attrs_define
class ObsPruneConfig:
    """Second-order unstructured pruning in the style of the Optimal BERT Surgeon.

    `hessian: fisher`: a block-diagonal inverse empirical Fisher (blocks of `block_size` weights, `num_gradients`
    per-sample gradients on the calibration data, else the train data) ranks weights by the OBS saliency
    ``w^2 / (2 [F^-1]_qq)``; the remaining weights of each block get the optimal update (Kurtic et al., 2022,
    https://arxiv.org/abs/2203.07259). `hessian: inputs`: the same saliency and update with each layer's exact
    Hessian of its output error, ``2 X X^T`` over the layer's calibration inputs, layers pruned in forward order
    (OBC / SparseGPT, Frantar & Alistarh, https://arxiv.org/abs/2301.00774): no gradients, one forward pass per
    layer, and the better one-shot choice without fine-tuning (see the pruning benchmark). One-shot, or gradual
    with a `schedule` (a fresh Hessian at every step). Runs on a torch.export or Hugging Face model, or on an ONNX
    model converted to torch and exported back.

        Attributes:
            type_ (Literal['prune']): The pass: `prune`; `method` selects the variant. Default: 'prune'.
            sparsity (float): Fraction of the pruned layers' weights set to zero.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            targets (list[str] | None | Unset): Layer names or globs to prune (module names such as `fc1`,
                `encoder.layer.*.output.dense`, or ONNX node/initializer names); default: every Linear/Conv (MatMul/Gemm/Conv)
                layer.
            exclude (list[str] | Unset): Layer names or globs to leave dense (besides embeddings, and the classifier head
                unless targeted).
            keep_head (bool | Unset): Leave the classifier head dense (layers named like `classifier`, `lm_head`, `head`,
                poolers, else the last Linear) unless `targets` names it. Default: True.
            fine_tune (FineTuneSettings | None | Unset): Recover after pruning (and after every step of a `schedule`) on the
                job's `train_dataset_id`, with the pruned weights held at zero; None: no recovery.
            method (Literal['obs'] | Unset): Second-order pruning (Optimal Brain Surgeon saliency). Default: 'obs'.
            scope (ObsPruneConfigScope | Unset): `layer`: every layer to the same sparsity; `global`: saliencies ranked
                across layers. Default: ObsPruneConfigScope.LAYER.
            hessian (ObsPruneConfigHessian | Unset): `fisher`: block-diagonal empirical Fisher from per-sample gradients
                (oBERT); `inputs`: each layer's exact Hessian 2XX^T of its output error on the calibration inputs (SparseGPT;
                with `scope: global` the layers' sparsities come from a global magnitude ranking). Default:
                ObsPruneConfigHessian.FISHER.
            block_size (int | Unset): Weights per Fisher block (memory: weights x block_size). Default: 32.
            num_gradients (int | Unset): Per-sample gradients in each Fisher; with `hessian: inputs`, the calibration
                samples whose inputs form the Hessians. Default: 128.
            dampening (float | Unset): Hessian dampening, relative to its mean diagonal. Default: 0.01.
            update (ObsPruneConfigUpdate | Unset): `sequential`: greedy one weight at a time with OBS updates (OBC);
                `multi`: oBERT's closed-form update of each block (`hessian: fisher`). Default: ObsPruneConfigUpdate.SEQUENTIAL.
            schedule (None | Schedule | Unset): Gradual pruning; None: one-shot.
    """

    sparsity: float
    type_: Literal["prune"] = "prune"
    version: int | Unset = 1
    targets: list[str] | None | Unset = UNSET
    exclude: list[str] | Unset = UNSET
    keep_head: bool | Unset = True
    fine_tune: FineTuneSettings | None | Unset = UNSET
    method: Literal["obs"] | Unset = "obs"
    scope: ObsPruneConfigScope | Unset = ObsPruneConfigScope.LAYER
    hessian: ObsPruneConfigHessian | Unset = ObsPruneConfigHessian.FISHER
    block_size: int | Unset = 32
    num_gradients: int | Unset = 128
    dampening: float | Unset = 0.01
    update: ObsPruneConfigUpdate | Unset = ObsPruneConfigUpdate.SEQUENTIAL
    schedule: None | Schedule | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        from ..models.fine_tune_settings import FineTuneSettings  # noqa: PLC0415
        from ..models.schedule import Schedule  # noqa: PLC0415

        type_ = self.type_

        sparsity = self.sparsity

        version = self.version

        targets: list[str] | None | Unset
        if isinstance(self.targets, Unset):
            targets = UNSET
        elif isinstance(self.targets, list):
            targets = self.targets

        else:
            targets = self.targets

        exclude: list[str] | Unset = UNSET
        if not isinstance(self.exclude, Unset):
            exclude = self.exclude

        keep_head = self.keep_head

        fine_tune: dict[str, Any] | None | Unset
        if isinstance(self.fine_tune, Unset):
            fine_tune = UNSET
        elif isinstance(self.fine_tune, FineTuneSettings):
            fine_tune = self.fine_tune.to_dict()
        else:
            fine_tune = self.fine_tune

        method = self.method

        scope: str | Unset = UNSET
        if not isinstance(self.scope, Unset):
            scope = self.scope.value

        hessian: str | Unset = UNSET
        if not isinstance(self.hessian, Unset):
            hessian = self.hessian.value

        block_size = self.block_size

        num_gradients = self.num_gradients

        dampening = self.dampening

        update: str | Unset = UNSET
        if not isinstance(self.update, Unset):
            update = self.update.value

        schedule: dict[str, Any] | None | Unset
        if isinstance(self.schedule, Unset):
            schedule = UNSET
        elif isinstance(self.schedule, Schedule):
            schedule = self.schedule.to_dict()
        else:
            schedule = self.schedule

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "type": type_,
                "sparsity": sparsity,
            }
        )
        if version is not UNSET:
            field_dict["version"] = version
        if targets is not UNSET:
            field_dict["targets"] = targets
        if exclude is not UNSET:
            field_dict["exclude"] = exclude
        if keep_head is not UNSET:
            field_dict["keep_head"] = keep_head
        if fine_tune is not UNSET:
            field_dict["fine_tune"] = fine_tune
        if method is not UNSET:
            field_dict["method"] = method
        if scope is not UNSET:
            field_dict["scope"] = scope
        if hessian is not UNSET:
            field_dict["hessian"] = hessian
        if block_size is not UNSET:
            field_dict["block_size"] = block_size
        if num_gradients is not UNSET:
            field_dict["num_gradients"] = num_gradients
        if dampening is not UNSET:
            field_dict["dampening"] = dampening
        if update is not UNSET:
            field_dict["update"] = update
        if schedule is not UNSET:
            field_dict["schedule"] = schedule

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.fine_tune_settings import FineTuneSettings  # noqa: PLC0415
        from ..models.schedule import Schedule  # noqa: PLC0415

        d = dict(src_dict)
        type_ = cast(Literal["prune"], d.pop("type"))
        if type_ != "prune":
            raise ValueError(f"type must match const 'prune', got '{type_}'")

        sparsity = d.pop("sparsity")

        version = d.pop("version", UNSET)

        def _parse_targets(data: object) -> list[str] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                targets_type_0 = cast(list[str], data)

                return targets_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[str] | None | Unset, data)

        targets = _parse_targets(d.pop("targets", UNSET))

        exclude = cast(list[str], d.pop("exclude", UNSET))

        keep_head = d.pop("keep_head", UNSET)

        def _parse_fine_tune(data: object) -> FineTuneSettings | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                fine_tune_type_0 = FineTuneSettings.from_dict(data)

                return fine_tune_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(FineTuneSettings | None | Unset, data)

        fine_tune = _parse_fine_tune(d.pop("fine_tune", UNSET))

        method = cast(Literal["obs"] | Unset, d.pop("method", UNSET))
        if method != "obs" and not isinstance(method, Unset):
            raise ValueError(f"method must match const 'obs', got '{method}'")

        _scope = d.pop("scope", UNSET)
        scope: ObsPruneConfigScope | Unset
        if isinstance(_scope, Unset):
            scope = UNSET
        else:
            scope = ObsPruneConfigScope(_scope)

        _hessian = d.pop("hessian", UNSET)
        hessian: ObsPruneConfigHessian | Unset
        if isinstance(_hessian, Unset):
            hessian = UNSET
        else:
            hessian = ObsPruneConfigHessian(_hessian)

        block_size = d.pop("block_size", UNSET)

        num_gradients = d.pop("num_gradients", UNSET)

        dampening = d.pop("dampening", UNSET)

        _update = d.pop("update", UNSET)
        update: ObsPruneConfigUpdate | Unset
        if isinstance(_update, Unset):
            update = UNSET
        else:
            update = ObsPruneConfigUpdate(_update)

        def _parse_schedule(data: object) -> None | Schedule | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                schedule_type_0 = Schedule.from_dict(data)

                return schedule_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | Schedule | Unset, data)

        schedule = _parse_schedule(d.pop("schedule", UNSET))

        obs_prune_config = cls(
            type_=type_,
            sparsity=sparsity,
            version=version,
            targets=targets,
            exclude=exclude,
            keep_head=keep_head,
            fine_tune=fine_tune,
            method=method,
            scope=scope,
            hessian=hessian,
            block_size=block_size,
            num_gradients=num_gradients,
            dampening=dampening,
            update=update,
            schedule=schedule,
        )

        return obs_prune_config
