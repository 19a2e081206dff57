"""Config of the `export` pass: convert a PyTorch model to ONNX at this point of the pipeline."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deepopt_core.passes.base import PassConfig


class ExportConfig(PassConfig):
    """Export to ONNX with `torch.onnx.export`; later passes run on the ONNX graph.

    The exported graph is checked with the ONNX checker and run in ONNX Runtime against the PyTorch model.
    """

    type: Literal["export"] = Field("export", description="The pass: `export`.")
    format: Literal["onnx"] = Field("onnx", description="The target format; ONNX is the only one.")
    opset: int = Field(17, ge=13, le=23, description="ONNX opset version of the exported graph.")
    dynamic_batch: bool = Field(True, description="Export with a symbolic batch dimension.")
