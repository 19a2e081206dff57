from enum import StrEnum


class FullFinetuneConfigHead(StrEnum):
    AUTO = "auto"
    KEEP = "keep"
    NEW = "new"

    def __str__(self) -> str:
        return str(self.value)
