from enum import StrEnum


class StructuredPruneConfigImportance(StrEnum):
    FISHER = "fisher"
    MAGNITUDE = "magnitude"
    TAYLOR = "taylor"

    def __str__(self) -> str:
        return str(self.value)
