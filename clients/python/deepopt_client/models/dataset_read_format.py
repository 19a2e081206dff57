from enum import StrEnum


class DatasetReadFormat(StrEnum):
    JSONL = "jsonl"
    NPZ = "npz"

    def __str__(self) -> str:
        return str(self.value)
