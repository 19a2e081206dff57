from enum import StrEnum


class JobCreateOutputsType0Item(StrEnum):
    HF = "hf"
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"

    def __str__(self) -> str:
        return str(self.value)
