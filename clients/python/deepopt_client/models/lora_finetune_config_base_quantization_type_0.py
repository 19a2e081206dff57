from enum import StrEnum


class LoraFinetuneConfigBaseQuantizationType0(StrEnum):
    INT4 = "int4"
    INT8 = "int8"

    def __str__(self) -> str:
        return str(self.value)
