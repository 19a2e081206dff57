"""Small real inputs for API tests: a two-layer ONNX classifier (built with onnx.helper, no torch) and
datasets that do or do not match it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def build_tiny_onnx(path: Path, features: int = 4, hidden: int = 16, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(features, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(hidden, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(hidden, classes)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return build_tiny_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def tiny_eval_npz() -> bytes:
    rng = np.random.default_rng(1)
    return npz_bytes(input=rng.normal(size=(32, 4)).astype(np.float32), labels=rng.integers(0, 3, 32))
