from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="TensorInfo")


@_attrs_define
class TensorInfo:
    """
    Attributes:
        name (str):
        shape (list[int | None | str] | None | Unset): Dims; strings/None are symbolic.
        dtype (str | Unset):  Default: 'float32'.
    """

    name: str
    shape: list[int | None | str] | None | Unset = UNSET
    dtype: str | Unset = "float32"

    def to_dict(self) -> dict[str, Any]:
        name = self.name

        shape: list[int | None | str] | None | Unset
        if isinstance(self.shape, Unset):
            shape = UNSET
        elif isinstance(self.shape, list):
            shape = []
            for shape_type_0_item_data in self.shape:
                shape_type_0_item: int | None | str
                shape_type_0_item = shape_type_0_item_data
                shape.append(shape_type_0_item)

        else:
            shape = self.shape

        dtype = self.dtype

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "name": name,
            }
        )
        if shape is not UNSET:
            field_dict["shape"] = shape
        if dtype is not UNSET:
            field_dict["dtype"] = dtype

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        name = d.pop("name")

        def _parse_shape(data: object) -> list[int | None | str] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                shape_type_0 = []
                _shape_type_0 = data
                for shape_type_0_item_data in _shape_type_0:

                    def _parse_shape_type_0_item(data: object) -> int | None | str:
                        if data is None:
                            return data
                        return cast(int | None | str, data)

                    shape_type_0_item = _parse_shape_type_0_item(shape_type_0_item_data)

                    shape_type_0.append(shape_type_0_item)

                return shape_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[int | None | str] | None | Unset, data)

        shape = _parse_shape(d.pop("shape", UNSET))

        dtype = d.pop("dtype", UNSET)

        tensor_info = cls(
            name=name,
            shape=shape,
            dtype=dtype,
        )

        return tensor_info
