from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.auto_config_allowed_item import AutoConfigAllowedItem
from ..models.auto_config_metric_type_0 import AutoConfigMetricType0
from ..models.auto_config_objective import AutoConfigObjective
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.auto_budget import AutoBudget


T = TypeVar("T", bound="AutoConfig")


@_attrs_define
class AutoConfig:
    """Find the fastest (or smallest) model that loses at most `max_accuracy_drop` on the job's eval dataset.

    The pass measures the model it receives, then candidate recipes of the other passes (quantization modes,
    pruning sparsities, and combinations of the ones that held the bound), the cheap and promising ones first.
    With the job's train dataset it also searches the recipes that train (they cost minutes, so they come after
    the cheap ones): structured pruning with fine-tuning (`prune`) and a student of half the width distilled from
    the model (`distill`).
    Recipes are rejected without running when the measured sensitivities of their parts say they cannot meet the
    bound (a pruning sparsity above one that already lost too much; a combination whose parts' drops add up past
    the bound) or cannot beat the best model found so far. Every trial (recipe, metrics, time) is recorded in the
    job's decisions and report; the final candidates are timed again, interleaved with the original, before one
    is chosen. When no recipe meets the bound, the model with the smallest drop on the Pareto front is returned
    and its benchmark says `met_bound: false`. Accuracy-driven tuning as in Intel Neural Compressor's
    strategies; the early rejection follows the per-layer sensitivity idea of Wu et al., 2020,
    https://arxiv.org/abs/2004.09602

        Attributes:
            type_ (Literal['auto']): The pass: `auto`. Default: 'auto'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            objective (AutoConfigObjective | Unset): What to minimise: p50 latency at `batch_size`, or the size of the file.
                Default: AutoConfigObjective.LATENCY.
            max_accuracy_drop (float | Unset): Largest allowed drop of the metric against the model the pass receives
                (absolute: 0.01 is one accuracy point, or 0.01 of cosine fidelity). Default: 0.01.
            metric (AutoConfigMetricType0 | None | Unset): `accuracy` (needs labels) or `fidelity` (mean cosine of the
                outputs to the original's); default: accuracy when the eval dataset has labels, else fidelity.
            budget (AutoBudget | Unset): How much searching the user pays for: the search stops at whichever limit it
                reaches first.
            allowed (list[AutoConfigAllowedItem] | Unset): Pass types recipes may use: `quantize` (int8, fp16 and int4
                modes), `prune` (magnitude sparsities; with train_dataset_id also structured pruning with fine-tuning),
                `distill` (a student of half the width, distilled on train_dataset_id; needs one).
            batch_size (int | Unset): Batch size trials are timed at (objective `latency`). Default: 8.
            num_samples (int | Unset): Eval rows each trial is measured on. Default: 1024.
    """

    type_: Literal["auto"] = "auto"
    version: int | Unset = 1
    objective: AutoConfigObjective | Unset = AutoConfigObjective.LATENCY
    max_accuracy_drop: float | Unset = 0.01
    metric: AutoConfigMetricType0 | None | Unset = UNSET
    budget: AutoBudget | Unset = UNSET
    allowed: list[AutoConfigAllowedItem] | Unset = UNSET
    batch_size: int | Unset = 8
    num_samples: int | Unset = 1024

    def to_dict(self) -> dict[str, Any]:
        type_ = self.type_

        version = self.version

        objective: str | Unset = UNSET
        if not isinstance(self.objective, Unset):
            objective = self.objective.value

        max_accuracy_drop = self.max_accuracy_drop

        metric: None | str | Unset
        if isinstance(self.metric, Unset):
            metric = UNSET
        elif isinstance(self.metric, AutoConfigMetricType0):
            metric = self.metric.value
        else:
            metric = self.metric

        budget: dict[str, Any] | Unset = UNSET
        if not isinstance(self.budget, Unset):
            budget = self.budget.to_dict()

        allowed: list[str] | Unset = UNSET
        if not isinstance(self.allowed, Unset):
            allowed = []
            for allowed_item_data in self.allowed:
                allowed_item = allowed_item_data.value
                allowed.append(allowed_item)

        batch_size = self.batch_size

        num_samples = self.num_samples

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "type": type_,
            }
        )
        if version is not UNSET:
            field_dict["version"] = version
        if objective is not UNSET:
            field_dict["objective"] = objective
        if max_accuracy_drop is not UNSET:
            field_dict["max_accuracy_drop"] = max_accuracy_drop
        if metric is not UNSET:
            field_dict["metric"] = metric
        if budget is not UNSET:
            field_dict["budget"] = budget
        if allowed is not UNSET:
            field_dict["allowed"] = allowed
        if batch_size is not UNSET:
            field_dict["batch_size"] = batch_size
        if num_samples is not UNSET:
            field_dict["num_samples"] = num_samples

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.auto_budget import AutoBudget  # noqa: PLC0415

        d = dict(src_dict)
        type_ = cast(Literal["auto"], d.pop("type"))
        if type_ != "auto":
            raise ValueError(f"type must match const 'auto', got '{type_}'")

        version = d.pop("version", UNSET)

        _objective = d.pop("objective", UNSET)
        objective: AutoConfigObjective | Unset
        if isinstance(_objective, Unset):
            objective = UNSET
        else:
            objective = AutoConfigObjective(_objective)

        max_accuracy_drop = d.pop("max_accuracy_drop", UNSET)

        def _parse_metric(data: object) -> AutoConfigMetricType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                metric_type_0 = AutoConfigMetricType0(data)

                return metric_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(AutoConfigMetricType0 | None | Unset, data)

        metric = _parse_metric(d.pop("metric", UNSET))

        _budget = d.pop("budget", UNSET)
        budget: AutoBudget | Unset
        if isinstance(_budget, Unset):
            budget = UNSET
        else:
            budget = AutoBudget.from_dict(_budget)

        _allowed = d.pop("allowed", UNSET)
        allowed: list[AutoConfigAllowedItem] | Unset = UNSET
        if _allowed is not UNSET:
            allowed = []
            for allowed_item_data in _allowed:
                allowed_item = AutoConfigAllowedItem(allowed_item_data)

                allowed.append(allowed_item)

        batch_size = d.pop("batch_size", UNSET)

        num_samples = d.pop("num_samples", UNSET)

        auto_config = cls(
            type_=type_,
            version=version,
            objective=objective,
            max_accuracy_drop=max_accuracy_drop,
            metric=metric,
            budget=budget,
            allowed=allowed,
            batch_size=batch_size,
            num_samples=num_samples,
        )

        return auto_config
