from enum import StrEnum


class WebhookSecretReadSource(StrEnum):
    GENERATED = "generated"
    SETTINGS = "settings"

    def __str__(self) -> str:
        return str(self.value)
