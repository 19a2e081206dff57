"""ONNX Runtime sessions of untrusted models load no custom-op libraries and take no configuration from the model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from deepopt_core.formats.ort_session import LOAD_CONFIG_FROM_MODEL, inference_session, session_options

ROOT = Path(__file__).resolve().parents[2]


def custom_op_model(domain: str = "ai.onnx.contrib", op: str = "StringRegexReplace") -> bytes:
    """A graph whose only node is a custom op (an onnxruntime-extensions op name, and an invented domain)."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], domain=domain)], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(("domain", "op"), [("ai.onnx.contrib", "StringRegexReplace"), ("evil.ops", "RunShell")])
def test_a_custom_op_graph_does_not_load(domain: str, op: str, tmp_path: Path) -> None:
    path = tmp_path / "custom.onnx"
    path.write_bytes(custom_op_model(domain, op))
    for model in (str(path), path.read_bytes()):
        with pytest.raises(Exception, match=re.escape(op) + "|" + re.escape(domain)):
            inference_session(model)


def test_the_runner_of_benchmarks_refuses_custom_ops_too(tmp_path: Path) -> None:
    from deepopt_core.evaluate.runners import OrtRunner

    path = tmp_path / "custom.onnx"
    path.write_bytes(custom_op_model("evil.ops", "RunShell"))
    with pytest.raises(Exception, match="RunShell|evil.ops"):
        OrtRunner(path)


def test_model_embedded_session_config_is_switched_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    # What ONNX Runtime would apply with ORT_LOAD_CONFIG_FROM_MODEL=1: options chosen by the model's author.
    helper.set_model_props(model, {"ort_config": '{"session_options": {"intra_op_num_threads": 4096}}'})
    monkeypatch.setenv(LOAD_CONFIG_FROM_MODEL, "1")
    options = session_options()
    session = inference_session(model.SerializeToString(), options)
    assert LOAD_CONFIG_FROM_MODEL not in os.environ
    x = np.array([[-1, 0, 1, 2]], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0))


def test_every_session_is_made_by_the_factory() -> None:
    """No code registers custom-op libraries, and sessions are only created in formats/ort_session.py."""
    offenders = []
    for package in ("deepopt_core", "app", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if "register_custom_ops_library" in text and path.name != "ort_session.py":
                offenders.append(f"{path}: registers a custom-op library")
            if re.search(r"\bort\.(SessionOptions|InferenceSession)\(", text) and path.name != "ort_session.py":
                offenders.append(f"{path}: creates an ONNX Runtime session outside formats/ort_session.py")
    assert offenders == []
