from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.magnitude_prune_config_scope import MagnitudePruneConfigScope
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.fine_tune_settings import FineTuneSettings
    from ..models.schedule import Schedule


T = TypeVar("T", bound="MagnitudePruneConfig")


@_attrs_define
class MagnitudePruneConfig:
    """Unstructured magnitude pruning of the weights of Linear/Conv (PyTorch) or MatMul/Gemm/Conv (ONNX).

    `scope="global"` ranks all prunable weights together; `"layer"` prunes each layer to the same sparsity. With a
    `schedule`, sparsity rises on the cubic schedule with `fine_tune` between steps (gradual magnitude pruning,
    Zhu & Gupta, 2017, https://arxiv.org/abs/1710.01878). Paper: Han et al., 2015, https://arxiv.org/abs/1506.02626

        Attributes:
            type_ (Literal['prune']): The pass: `prune`; `method` selects the variant. Default: 'prune'.
            sparsity (float): Fraction of prunable weights set to zero.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            targets (list[str] | None | Unset): Layer names or globs to prune (module names such as `fc1`,
                `encoder.layer.*.output.dense`, or ONNX node/initializer names); default: every Linear/Conv (MatMul/Gemm/Conv)
                layer.
            exclude (list[str] | Unset): Layer names or globs to leave dense (besides embeddings, and the classifier head
                unless targeted).
            keep_head (bool | Unset): Leave the classifier head dense (the one-shot default of the first release prunes it
                too). Default: False.
            fine_tune (FineTuneSettings | None | Unset): Recover after pruning (and after every step of a `schedule`) on the
                job's `train_dataset_id`, with the pruned weights held at zero; None: no recovery.
            method (Literal['magnitude'] | Unset): Unstructured pruning of the smallest weights. Default: 'magnitude'.
            scope (MagnitudePruneConfigScope | Unset): `global`: one ranking of all prunable weights, so thin layers keep
                more of theirs; `layer`: every layer to the same sparsity. Default: MagnitudePruneConfigScope.GLOBAL.
            schedule (None | Schedule | Unset): Gradual pruning (needs `fine_tune`); None: one-shot.
    """

    sparsity: float
    type_: Literal["prune"] = "prune"
    version: int | Unset = 1
    targets: list[str] | None | Unset = UNSET
    exclude: list[str] | Unset = UNSET
    keep_head: bool | Unset = False
    fine_tune: FineTuneSettings | None | Unset = UNSET
    method: Literal["magnitude"] | Unset = "magnitude"
    scope: MagnitudePruneConfigScope | Unset = MagnitudePruneConfigScope.GLOBAL
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

        method = cast(Literal["magnitude"] | Unset, d.pop("method", UNSET))
        if method != "magnitude" and not isinstance(method, Unset):
            raise ValueError(f"method must match const 'magnitude', got '{method}'")

        _scope = d.pop("scope", UNSET)
        scope: MagnitudePruneConfigScope | Unset
        if isinstance(_scope, Unset):
            scope = UNSET
        else:
            scope = MagnitudePruneConfigScope(_scope)

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

        magnitude_prune_config = cls(
            type_=type_,
            sparsity=sparsity,
            version=version,
            targets=targets,
            exclude=exclude,
            keep_head=keep_head,
            fine_tune=fine_tune,
            method=method,
            scope=scope,
            schedule=schedule,
        )

        return magnitude_prune_config
