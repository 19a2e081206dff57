from enum import StrEnum


class ArtifactReadKind(StrEnum):
    ADAPTER = "adapter"
    MODEL = "model"
    PLOT = "plot"
    REPORT = "report"

    def __str__(self) -> str:
        return str(self.value)
