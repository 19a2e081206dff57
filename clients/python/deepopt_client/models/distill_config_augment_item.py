from enum import StrEnum


class DistillConfigAugmentItem(StrEnum):
    MIXUP = "mixup"
    NOISE = "noise"
    SHIFT = "shift"
    TOKEN_MASK = "token_mask"

    def __str__(self) -> str:
        return str(self.value)
