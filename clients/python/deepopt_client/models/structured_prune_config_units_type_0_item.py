from enum import StrEnum


class StructuredPruneConfigUnitsType0Item(StrEnum):
    CHANNELS = "channels"
    FFN = "ffn"
    HEADS = "heads"
    NEURONS = "neurons"

    def __str__(self) -> str:
        return str(self.value)
