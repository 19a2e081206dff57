from enum import StrEnum


class ObsPruneConfigScope(StrEnum):
    GLOBAL = "global"
    LAYER = "layer"

    def __str__(self) -> str:
        return str(self.value)
