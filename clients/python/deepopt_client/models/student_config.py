from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..models.student_config_init import StudentConfigInit
from ..types import UNSET, Unset

T = TypeVar("T", bound="StudentConfig")


@_attrs_define
class StudentConfig:
    """The student: another uploaded model (`model_id`), or one derived from the teacher.

    * `keep_every: k` keeps every k-th layer of a transformer encoder (Hugging Face BERT family, or the largest
      stack of identical blocks of a plain torch encoder), initialised from the teacher's layers as DistilBERT
      (Sanh et al., 2019, https://arxiv.org/abs/1910.01108); the last layer is always kept.
    * `width_ratio: w` keeps the fraction w of the hidden and feed-forward units of a BERT-family model with a
      task head, of the feed-forward units of other transformers (ViT, Llama, Qwen2, Mistral, DistilBERT, and a
      headless encoder, whose hidden size stays), or of the channels and neurons of a CNN/MLP program (through
      BatchNorms and depthwise convs; residual streams stay whole), choosing the most important units (weight
      norms, as Li et al., 2017, https://arxiv.org/abs/1608.08710) and starting from their weights.

    Both may be combined; `init: random` re-initialises the derived student (training from scratch).

        Attributes:
            model_id (None | str | Unset): An uploaded PyTorch model (same inputs and outputs).
            keep_every (int | None | Unset): Keep every k-th encoder layer.
            width_ratio (float | None | Unset): Keep this fraction of units.
            init (StudentConfigInit | Unset): Start a derived student from the teacher's weights, or from a fresh
                initialisation. Default: StudentConfigInit.TEACHER.
    """

    model_id: None | str | Unset = UNSET
    keep_every: int | None | Unset = UNSET
    width_ratio: float | None | Unset = UNSET
    init: StudentConfigInit | Unset = StudentConfigInit.TEACHER

    def to_dict(self) -> dict[str, Any]:
        model_id: None | str | Unset
        if isinstance(self.model_id, Unset):
            model_id = UNSET
        else:
            model_id = self.model_id

        keep_every: int | None | Unset
        if isinstance(self.keep_every, Unset):
            keep_every = UNSET
        else:
            keep_every = self.keep_every

        width_ratio: float | None | Unset
        if isinstance(self.width_ratio, Unset):
            width_ratio = UNSET
        else:
            width_ratio = self.width_ratio

        init: str | Unset = UNSET
        if not isinstance(self.init, Unset):
            init = self.init.value

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if model_id is not UNSET:
            field_dict["model_id"] = model_id
        if keep_every is not UNSET:
            field_dict["keep_every"] = keep_every
        if width_ratio is not UNSET:
            field_dict["width_ratio"] = width_ratio
        if init is not UNSET:
            field_dict["init"] = init

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)

        def _parse_model_id(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        model_id = _parse_model_id(d.pop("model_id", UNSET))

        def _parse_keep_every(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        keep_every = _parse_keep_every(d.pop("keep_every", UNSET))

        def _parse_width_ratio(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        width_ratio = _parse_width_ratio(d.pop("width_ratio", UNSET))

        _init = d.pop("init", UNSET)
        init: StudentConfigInit | Unset
        if isinstance(_init, Unset):
            init = UNSET
        else:
            init = StudentConfigInit(_init)

        student_config = cls(
            model_id=model_id,
            keep_every=keep_every,
            width_ratio=width_ratio,
            init=init,
        )

        return student_config
