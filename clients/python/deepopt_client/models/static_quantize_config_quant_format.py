from enum import StrEnum


class StaticQuantizeConfigQuantFormat(StrEnum):
    QDQ = "qdq"
    QOPERATOR = "qoperator"

    def __str__(self) -> str:
        return str(self.value)
