from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="Schedule")


@_attrs_define
class Schedule:
    """Gradual pruning on the cubic schedule of Zhu & Gupta, 2017 (https://arxiv.org/abs/1710.01878): sparsity
    rises from `initial_sparsity` to the target over `steps` pruning steps, with `fine_tune` after each.

        Attributes:
            steps (int): Pruning steps (1: one-shot).
            initial_sparsity (float | Unset): Sparsity of the first step's start. Default: 0.0.
    """

    steps: int
    initial_sparsity: float | Unset = 0.0

    def to_dict(self) -> dict[str, Any]:
        steps = self.steps

        initial_sparsity = self.initial_sparsity

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "steps": steps,
            }
        )
        if initial_sparsity is not UNSET:
            field_dict["initial_sparsity"] = initial_sparsity

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        steps = d.pop("steps")

        initial_sparsity = d.pop("initial_sparsity", UNSET)

        schedule = cls(
            steps=steps,
            initial_sparsity=initial_sparsity,
        )

        return schedule
