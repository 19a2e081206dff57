from enum import StrEnum


class ObsPruneConfigUpdate(StrEnum):
    MULTI = "multi"
    SEQUENTIAL = "sequential"

    def __str__(self) -> str:
        return str(self.value)
