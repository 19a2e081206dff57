from enum import StrEnum


class WeightOnlyQuantizeConfigAlgorithm(StrEnum):
    AUTO = "auto"
    AWQ_CLIP = "awq_clip"
    GPTQ = "gptq"
    HQQ = "hqq"
    K_QUANT = "k_quant"
    RTN = "rtn"

    def __str__(self) -> str:
        return str(self.value)
