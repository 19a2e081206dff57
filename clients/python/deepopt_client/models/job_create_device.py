from enum import StrEnum


class JobCreateDevice(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"

    def __str__(self) -> str:
        return str(self.value)
