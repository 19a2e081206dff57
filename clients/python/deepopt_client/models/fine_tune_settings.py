from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

from ..models.fine_tune_settings_method import FineTuneSettingsMethod
from ..types import UNSET, Unset

T = TypeVar("T", bound="FineTuneSettings")


@_attrs_define
class FineTuneSettings:
    """Recovery after pruning: Adam on the train data with pruned weights held at zero.

    `method: task` trains on the labels (cross-entropy), `distill` matches the unpruned model's outputs (Hinton et
    al., 2015, https://arxiv.org/abs/1503.02531), `auto` is `task` when the train data has labels.

        Attributes:
            epochs (int | Unset): Passes over the train data (after every schedule step). Default: 1.
            lr (float | Unset): Adam learning rate. Default: 0.001.
            method (FineTuneSettingsMethod | Unset): `task` (labels), `distill` (match the unpruned model) or `auto`.
                Default: FineTuneSettingsMethod.AUTO.
            batch_size (int | Unset): Rows per recovery step. Default: 32.
    """

    epochs: int | Unset = 1
    lr: float | Unset = 0.001
    method: FineTuneSettingsMethod | Unset = FineTuneSettingsMethod.AUTO
    batch_size: int | Unset = 32

    def to_dict(self) -> dict[str, Any]:
        epochs = self.epochs

        lr = self.lr

        method: str | Unset = UNSET
        if not isinstance(self.method, Unset):
            method = self.method.value

        batch_size = self.batch_size

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if epochs is not UNSET:
            field_dict["epochs"] = epochs
        if lr is not UNSET:
            field_dict["lr"] = lr
        if method is not UNSET:
            field_dict["method"] = method
        if batch_size is not UNSET:
            field_dict["batch_size"] = batch_size

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        epochs = d.pop("epochs", UNSET)

        lr = d.pop("lr", UNSET)

        _method = d.pop("method", UNSET)
        method: FineTuneSettingsMethod | Unset
        if isinstance(_method, Unset):
            method = UNSET
        else:
            method = FineTuneSettingsMethod(_method)

        batch_size = d.pop("batch_size", UNSET)

        fine_tune_settings = cls(
            epochs=epochs,
            lr=lr,
            method=method,
            batch_size=batch_size,
        )

        return fine_tune_settings
