from enum import StrEnum


class SeriesAdapterFinetuneConfigDevice(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def __str__(self) -> str:
        return str(self.value)
