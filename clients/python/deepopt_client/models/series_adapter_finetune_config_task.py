from enum import StrEnum


class SeriesAdapterFinetuneConfigTask(StrEnum):
    AUTO = "auto"
    CLASSIFICATION = "classification"
    REGRESSION = "regression"

    def __str__(self) -> str:
        return str(self.value)
