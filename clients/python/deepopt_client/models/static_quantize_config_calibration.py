from enum import StrEnum


class StaticQuantizeConfigCalibration(StrEnum):
    ENTROPY = "entropy"
    MINMAX = "minmax"
    PERCENTILE = "percentile"

    def __str__(self) -> str:
        return str(self.value)
