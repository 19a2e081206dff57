"""Configs of the `quantize` pass, one per mode, discriminated by `mode`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deepopt_core.passes.base import PassConfig


class DynamicQuantizeConfig(PassConfig):
    """Dynamic int8 quantization: int8 weights, activations quantized on the fly at run time.

    ONNX models go through ONNX Runtime's quantizer; PyTorch models through torch's dynamic quantization of
    Linear layers. Paper: Jacob et al., 2018, https://arxiv.org/abs/1712.05877
    """

    type: Literal["quantize"] = "quantize"
    mode: Literal["dynamic"] = "dynamic"
    weight_dtype: Literal["int8", "uint8"] = Field("int8", description="Storage type of quantized weights.")
    per_channel: bool = Field(False, description="One scale per output channel instead of per tensor.")
    exclude: list[str] = Field(
        default_factory=list, description="Node names (ONNX) or module names (PyTorch) to leave in float."
    )

    def representation_problem(self, representation: str) -> str | None:
        """Why these settings cannot run on `representation` ("onnx" or "torch"), or None."""
        if representation == "torch" and self.weight_dtype != "int8":
            return "PyTorch dynamic quantization stores int8 weights; weight_dtype 'uint8' needs an ONNX output"
        return None


# The first is the default when `mode` is omitted.
QUANTIZE_CONFIGS: list[type[PassConfig]] = [DynamicQuantizeConfig]
