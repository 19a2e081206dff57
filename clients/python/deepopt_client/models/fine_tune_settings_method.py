from enum import StrEnum


class FineTuneSettingsMethod(StrEnum):
    AUTO = "auto"
    DISTILL = "distill"
    TASK = "task"

    def __str__(self) -> str:
        return str(self.value)
