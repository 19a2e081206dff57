from enum import StrEnum


class StaticQuantizeConfigFusion(StrEnum):
    AUTO = "auto"
    FULL = "full"
    NONE = "none"
    NO_ATTENTION = "no_attention"

    def __str__(self) -> str:
        return str(self.value)
