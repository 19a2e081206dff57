from enum import StrEnum


class AccuracyGuardMetric(StrEnum):
    ACCURACY = "accuracy"
    FIDELITY = "fidelity"

    def __str__(self) -> str:
        return str(self.value)
