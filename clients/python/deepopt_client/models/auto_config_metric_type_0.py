from enum import StrEnum


class AutoConfigMetricType0(StrEnum):
    ACCURACY = "accuracy"
    FIDELITY = "fidelity"

    def __str__(self) -> str:
        return str(self.value)
