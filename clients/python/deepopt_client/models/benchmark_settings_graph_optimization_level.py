from enum import StrEnum


class BenchmarkSettingsGraphOptimizationLevel(StrEnum):
    ALL = "all"
    BASIC = "basic"
    DISABLED = "disabled"
    EXTENDED = "extended"

    def __str__(self) -> str:
        return str(self.value)
