from enum import StrEnum


class NMPruneConfigSelection(StrEnum):
    MAGNITUDE = "magnitude"
    OBS = "obs"

    def __str__(self) -> str:
        return str(self.value)
