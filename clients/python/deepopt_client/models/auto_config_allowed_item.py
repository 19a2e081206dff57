from enum import StrEnum


class AutoConfigAllowedItem(StrEnum):
    DISTILL = "distill"
    PRUNE = "prune"
    QUANTIZE = "quantize"

    def __str__(self) -> str:
        return str(self.value)
