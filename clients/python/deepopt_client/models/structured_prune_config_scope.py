from enum import StrEnum


class StructuredPruneConfigScope(StrEnum):
    GLOBAL = "global"
    LAYER = "layer"

    def __str__(self) -> str:
        return str(self.value)
