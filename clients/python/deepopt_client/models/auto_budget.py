from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="AutoBudget")


@_attrs_define
class AutoBudget:
    """How much searching the user pays for: the search stops at whichever limit it reaches first.

    Attributes:
        trials (int | Unset): Most recipes measured (recipes rejected from estimates without running do not count).
            Default: 12.
        minutes (float | Unset): Wall-clock limit of the search; a trial already running finishes, and the best model
            found so far is returned. Default: 30.0.
    """

    trials: int | Unset = 12
    minutes: float | Unset = 30.0

    def to_dict(self) -> dict[str, Any]:
        trials = self.trials

        minutes = self.minutes

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if trials is not UNSET:
            field_dict["trials"] = trials
        if minutes is not UNSET:
            field_dict["minutes"] = minutes

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        trials = d.pop("trials", UNSET)

        minutes = d.pop("minutes", UNSET)

        auto_budget = cls(
            trials=trials,
            minutes=minutes,
        )

        return auto_budget
