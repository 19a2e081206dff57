from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..models.accuracy_guard_metric import AccuracyGuardMetric
from ..types import UNSET, Unset

T = TypeVar("T", bound="AccuracyGuard")


@_attrs_define
class AccuracyGuard:
    """Keep the quality drop of a quantized model within bounds by returning the most sensitive layers to float.

    With the job's eval dataset, each quantized layer's sensitivity is measured (the drop of the model where only
    that layer is quantized); the fewest, most sensitive layers then go back to float until the drop is at most
    `max_drop`. The decisions list the layers left in float and the measured drops. Wu et al., 2020, section 4.3,
    https://arxiv.org/abs/2004.09602

        Attributes:
            max_drop (float): Largest allowed drop of the metric against the unquantized model (absolute: 0.01 is one
                accuracy point, or 0.01 of cosine fidelity).
            max_fallback (int | None | Unset): Most layers the guard may return to float; default: as many as needed.
            metric (AccuracyGuardMetric | Unset): `accuracy`: top-1 accuracy on the eval dataset's labels (needs labels);
                `fidelity`: mean cosine similarity of the outputs to the unquantized model's. Default:
                AccuracyGuardMetric.ACCURACY.
            num_samples (int | Unset): Eval rows the guard measures on (the first ones). Default: 512.
    """

    max_drop: float
    max_fallback: int | None | Unset = UNSET
    metric: AccuracyGuardMetric | Unset = AccuracyGuardMetric.ACCURACY
    num_samples: int | Unset = 512

    def to_dict(self) -> dict[str, Any]:
        max_drop = self.max_drop

        max_fallback: int | None | Unset
        if isinstance(self.max_fallback, Unset):
            max_fallback = UNSET
        else:
            max_fallback = self.max_fallback

        metric: str | Unset = UNSET
        if not isinstance(self.metric, Unset):
            metric = self.metric.value

        num_samples = self.num_samples

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "max_drop": max_drop,
            }
        )
        if max_fallback is not UNSET:
            field_dict["max_fallback"] = max_fallback
        if metric is not UNSET:
            field_dict["metric"] = metric
        if num_samples is not UNSET:
            field_dict["num_samples"] = num_samples

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        max_drop = d.pop("max_drop")

        def _parse_max_fallback(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        max_fallback = _parse_max_fallback(d.pop("max_fallback", UNSET))

        _metric = d.pop("metric", UNSET)
        metric: AccuracyGuardMetric | Unset
        if isinstance(_metric, Unset):
            metric = UNSET
        else:
            metric = AccuracyGuardMetric(_metric)

        num_samples = d.pop("num_samples", UNSET)

        accuracy_guard = cls(
            max_drop=max_drop,
            max_fallback=max_fallback,
            metric=metric,
            num_samples=num_samples,
        )

        return accuracy_guard
