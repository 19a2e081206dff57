from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="KeyCreate")


@_attrs_define
class KeyCreate:
    """
    Attributes:
        tenant (str):
        name (str | Unset):  Default: ''.
        admin (bool | Unset):  Default: False.
    """

    tenant: str
    name: str | Unset = ""
    admin: bool | Unset = False

    def to_dict(self) -> dict[str, Any]:
        tenant = self.tenant

        name = self.name

        admin = self.admin

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "tenant": tenant,
            }
        )
        if name is not UNSET:
            field_dict["name"] = name
        if admin is not UNSET:
            field_dict["admin"] = admin

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        tenant = d.pop("tenant")

        name = d.pop("name", UNSET)

        admin = d.pop("admin", UNSET)

        key_create = cls(
            tenant=tenant,
            name=name,
            admin=admin,
        )

        return key_create
