from enum import StrEnum


class ObsPruneConfigHessian(StrEnum):
    FISHER = "fisher"
    INPUTS = "inputs"

    def __str__(self) -> str:
        return str(self.value)
