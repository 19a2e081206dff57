from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="TeacherConfig")


@_attrs_define
class TeacherConfig:
    """Another uploaded model as the teacher (ONNX, run with ONNX Runtime, or PyTorch); default: the job's model.

    Attributes:
        model_id (str): An uploaded model: ONNX (run with ONNX Runtime) or PyTorch.
    """

    model_id: str

    def to_dict(self) -> dict[str, Any]:
        model_id = self.model_id

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "model_id": model_id,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        model_id = d.pop("model_id")

        teacher_config = cls(
            model_id=model_id,
        )

        return teacher_config
