from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.structured_prune_config_importance import StructuredPruneConfigImportance
from ..models.structured_prune_config_scope import StructuredPruneConfigScope
from ..models.structured_prune_config_units_type_0_item import StructuredPruneConfigUnitsType0Item
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.fine_tune_settings import FineTuneSettings


T = TypeVar("T", bound="StructuredPruneConfig")


@_attrs_define
class StructuredPruneConfig:
    """Structured pruning: remove whole units and rebuild smaller dense layers, so parameters and latency drop.

    Units: `channels` (Conv output channels, with their BatchNorm entries), `neurons` (Linear outputs feeding
    another Linear), `heads` (attention heads) and `ffn` (transformer feed-forward neurons) of Hugging Face
    BERT-family models and plain torch blocks. Ranked by `magnitude` (Li et al., 2017,
    https://arxiv.org/abs/1608.08710), first-order `taylor` (Molchanov et al., 2019,
    https://arxiv.org/abs/1906.10771) or second-order `fisher` (Kwon et al., 2022, https://arxiv.org/abs/2204.09656)
    importance on the calibration (else train) data; `fine_tune` recovers by task training or distillation.
    Runs on a torch.export or Hugging Face model, or on an ONNX model converted to torch (Linear/Conv chains).

        Attributes:
            type_ (Literal['prune']): The pass: `prune`; `method` selects the variant. Default: 'prune'.
            sparsity (float): Fraction of the units of each kind removed.
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
            method (Literal['structured'] | Unset): Remove whole units, rebuild smaller layers. Default: 'structured'.
            units (list[StructuredPruneConfigUnitsType0Item] | None | Unset): Unit kinds to remove; default: every kind the
                model has.
            importance (StructuredPruneConfigImportance | Unset): How units are ranked; `taylor` and `fisher` need
                calibration or train data. Default: StructuredPruneConfigImportance.MAGNITUDE.
            scope (StructuredPruneConfigScope | Unset): `layer`: the fraction in every layer; `global`: ranked across layers
                of a kind. Default: StructuredPruneConfigScope.LAYER.
            round_to (int | Unset): Kept units per layer rounded up to a multiple of this. Default: 1.
            reconstruct (bool | Unset): Refit each rebuilt Linear by least squares to the unpruned model's outputs on the
                calibration data (Hugging Face models). Default: False.
    """

    sparsity: float
    type_: Literal["prune"] = "prune"
    version: int | Unset = 1
    targets: list[str] | None | Unset = UNSET
    exclude: list[str] | Unset = UNSET
    keep_head: bool | Unset = True
    fine_tune: FineTuneSettings | None | Unset = UNSET
    method: Literal["structured"] | Unset = "structured"
    units: list[StructuredPruneConfigUnitsType0Item] | None | Unset = UNSET
    importance: StructuredPruneConfigImportance | Unset = StructuredPruneConfigImportance.MAGNITUDE
    scope: StructuredPruneConfigScope | Unset = StructuredPruneConfigScope.LAYER
    round_to: int | Unset = 1
    reconstruct: bool | Unset = False

    def to_dict(self) -> dict[str, Any]:
        from ..models.fine_tune_settings import FineTuneSettings  # noqa: PLC0415

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

        units: list[str] | None | Unset
        if isinstance(self.units, Unset):
            units = UNSET
        elif isinstance(self.units, list):
            units = []
            for units_type_0_item_data in self.units:
                units_type_0_item = units_type_0_item_data.value
                units.append(units_type_0_item)

        else:
            units = self.units

        importance: str | Unset = UNSET
        if not isinstance(self.importance, Unset):
            importance = self.importance.value

        scope: str | Unset = UNSET
        if not isinstance(self.scope, Unset):
            scope = self.scope.value

        round_to = self.round_to

        reconstruct = self.reconstruct

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
        if units is not UNSET:
            field_dict["units"] = units
        if importance is not UNSET:
            field_dict["importance"] = importance
        if scope is not UNSET:
            field_dict["scope"] = scope
        if round_to is not UNSET:
            field_dict["round_to"] = round_to
        if reconstruct is not UNSET:
            field_dict["reconstruct"] = reconstruct

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.fine_tune_settings import FineTuneSettings  # noqa: PLC0415

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

        method = cast(Literal["structured"] | Unset, d.pop("method", UNSET))
        if method != "structured" and not isinstance(method, Unset):
            raise ValueError(f"method must match const 'structured', got '{method}'")

        def _parse_units(data: object) -> list[StructuredPruneConfigUnitsType0Item] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                units_type_0 = []
                _units_type_0 = data
                for units_type_0_item_data in _units_type_0:
                    units_type_0_item = StructuredPruneConfigUnitsType0Item(units_type_0_item_data)

                    units_type_0.append(units_type_0_item)

                return units_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[StructuredPruneConfigUnitsType0Item] | None | Unset, data)

        units = _parse_units(d.pop("units", UNSET))

        _importance = d.pop("importance", UNSET)
        importance: StructuredPruneConfigImportance | Unset
        if isinstance(_importance, Unset):
            importance = UNSET
        else:
            importance = StructuredPruneConfigImportance(_importance)

        _scope = d.pop("scope", UNSET)
        scope: StructuredPruneConfigScope | Unset
        if isinstance(_scope, Unset):
            scope = UNSET
        else:
            scope = StructuredPruneConfigScope(_scope)

        round_to = d.pop("round_to", UNSET)

        reconstruct = d.pop("reconstruct", UNSET)

        structured_prune_config = cls(
            type_=type_,
            sparsity=sparsity,
            version=version,
            targets=targets,
            exclude=exclude,
            keep_head=keep_head,
            fine_tune=fine_tune,
            method=method,
            units=units,
            importance=importance,
            scope=scope,
            round_to=round_to,
            reconstruct=reconstruct,
        )

        return structured_prune_config
