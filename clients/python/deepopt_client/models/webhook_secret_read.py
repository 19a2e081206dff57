from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.webhook_secret_read_source import WebhookSecretReadSource

T = TypeVar("T", bound="WebhookSecretRead")


@_attrs_define
class WebhookSecretRead:
    """
    Attributes:
        tenant (str):
        secret (str): Verify `X-DeepOpt-Signature` as `sha256=` + hex HMAC-SHA256(secret, body).
        source (WebhookSecretReadSource): settings: DEEPOPT_WEBHOOK_SECRETS (rotate it there); generated: kept in the
            database.
    """

    tenant: str
    secret: str
    source: WebhookSecretReadSource
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        tenant = self.tenant

        secret = self.secret

        source = self.source.value

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "tenant": tenant,
                "secret": secret,
                "source": source,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        tenant = d.pop("tenant")

        secret = d.pop("secret")

        source = WebhookSecretReadSource(d.pop("source"))

        webhook_secret_read = cls(
            tenant=tenant,
            secret=secret,
            source=source,
        )

        webhook_secret_read.additional_properties = d
        return webhook_secret_read

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
