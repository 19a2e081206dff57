"""Measured sparsity of prunable weights, shared by the prune pass (its decisions) and the benchmark.

Prunable weights are those of MatMul/Gemm/Conv (ONNX) or Linear/Conv (PyTorch), in float or quantized form; a
quantized element counts as zero when it equals its zero point (so it dequantizes to exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deepopt_core.formats.onnx_inspect import WeightRef, weight_refs


@dataclass
class SparsityReport:
    """Zeros among prunable weights, overall and per layer (layer name -> fraction of zeros)."""

    zeros: int = 0
    total: int = 0
    layers: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def add(self, layer: str, zeros: int, total: int) -> None:
        self.zeros += zeros
        self.total += total
        self.layers[layer] = round(zeros / total, 6) if total else 0.0


def onnx_layer_name(ref: WeightRef) -> str:
    """A stable layer name: the initializer name without ``_quantized`` and ``.weight``, else the node name.

    ``fc1.weight`` (float) and ``fc1.weight_quantized`` (after ONNX Runtime quantization) are both ``fc1``.
    """
    name = ref.name.removesuffix("_quantized").removesuffix("_transposed")
    if name.endswith(".weight"):
        return name.removesuffix(".weight")
    return ref.node


def _zero_count(values: np.ndarray, zero_point: np.ndarray | None) -> int:
    if zero_point is None or zero_point.size == 1:
        target = 0 if zero_point is None else zero_point.reshape(()).item()
        return int(np.count_nonzero(values == target))
    if values.shape[-1] == zero_point.size:
        return int(np.count_nonzero(values == zero_point.reshape((1,) * (values.ndim - 1) + (-1,))))
    if values.shape[0] == zero_point.size:
        return int(np.count_nonzero(values == zero_point.reshape((-1,) + (1,) * (values.ndim - 1))))
    return int(np.count_nonzero(values == 0))


def onnx_sparsity(model: onnx.ModelProto) -> SparsityReport:
    """Sparsity of the prunable weights of an ONNX model (float or quantized)."""
    inits = {t.name: t for t in model.graph.initializer}
    report = SparsityReport()
    for ref in weight_refs(model):
        values = numpy_helper.to_array(inits[ref.name])
        zero_point = numpy_helper.to_array(inits[ref.zero_point]) if ref.zero_point in inits else None
        report.add(onnx_layer_name(ref), _zero_count(values, zero_point), int(values.size))
    return report


def torch_sparsity(module: Any) -> SparsityReport:
    """Sparsity of a torch module's Linear/Conv weights, float or dynamically quantized."""
    import torch

    from deepopt_core.formats.torch_common import prunable_params, quantized_weights, zeros_of_quantized

    report = SparsityReport()
    with torch.no_grad():
        for name, weight in prunable_params(module).items():
            report.add(name, int((weight == 0).sum()), weight.numel())
        for name, (qweight, _) in quantized_weights(module).items():
            zeros, total = zeros_of_quantized(qweight)
            report.add(name, zeros, total)
    return report
