from enum import StrEnum


class PrefixFinetuneConfigMixedPrecision(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    NO = "no"

    def __str__(self) -> str:
        return str(self.value)
