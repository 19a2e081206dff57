"""ONNX files from torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, opset 18) of CNNs, as the
conformance matrix uploads them (`onnx_dynamo`): the prune methods that convert ONNX to torch, and dynamic
quantization.

They failed after acceptance: onnx2torch had no converter for opset-18 ``ReduceMean`` (axes an input) nor for
``Reshape`` with ``allowzero=1``; dynamic quantization's Gemm -> MatMul rewrite transposed the classifier weight
under its own name while the ``value_info`` the exporter records for initializers kept the old shape, so ONNX
Runtime's shape inference refused the model. What onnx2torch still lacks is refused at submit, from the stored
inspection, by the table the conversion is checked against.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import matrix_models as mm
from deepopt_core.errors import PassFailed
from deepopt_core.formats import inspect_model
from deepopt_core.formats.onnx_torch_ops import CONVERTIBLE_OPS, NEEDS_TORCHVISION
from deepopt_core.formats.ort_session import inference_session
from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.passes.prune.config import ObsPruneConfig, StructuredPruneConfig
from deepopt_core.planning import onnx_import_problem

pytestmark = pytest.mark.timeout(120)
CALIBRATION = {"format": "npz", "num_rows": 16, "has_labels": False}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield


@pytest.fixture(scope="module")
def resnet_dynamo() -> Path:
    """The matrix's ResNet as the dynamo exporter writes it (built once into the matrix's cache)."""
    return mm.model_file(mm.BY_NAME["resnet"], "onnx_dynamo")


def _pixels(rows: int) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(rows).normal(size=(rows, 3, 32, 32)).astype(np.float32)}


def test_the_table_of_convertible_ops_is_onnx2torchs_registry() -> None:
    from deepopt_core.formats.onnx_torch import load_converter

    load_converter()
    from onnx2torch.node_converters import registry

    live: dict[str, set[int]] = {}
    for description in registry._CONVERTER_REGISTRY:
        assert description.domain == "", description
        live.setdefault(description.operation_type, set()).add(description.version)
    assert {op: tuple(sorted(v)) for op, v in live.items() if op not in NEEDS_TORCHVISION} == CONVERTIBLE_OPS


def test_a_dynamo_resnet_converts_to_torch_and_matches_onnxruntime(resnet_dynamo: Path) -> None:
    from deepopt_core.formats.onnx_torch import onnx_to_torch

    model = onnx.load(str(resnet_dynamo))
    assert {o.version for o in model.opset_import if o.domain == ""} == {18}
    ops = {n.op_type: n for n in model.graph.node}
    assert "ReduceMean" in ops and [a.i for a in ops["Reshape"].attribute if a.name == "allowzero"] == [1]
    module, report = onnx_to_torch(model, _pixels(2), ["pixel_values"])
    assert len(report["converted_layers"]) == 7  # six convolutions and the classifier
    assert report["max_abs_diff_vs_onnxruntime"] <= 1e-4


def test_the_submit_check_accepts_dynamo_cnns_and_refuses_what_onnx2torch_lacks(resnet_dynamo: Path) -> None:
    info = inspect_model(resnet_dynamo).model_dump()
    context = SubmitContext(model=info, calibration=CALIBRATION)
    assert check_pass(ObsPruneConfig(sparsity=0.5), context) == []
    assert check_pass(StructuredPruneConfig(sparsity=0.5), context) == []
    # Opset 18 changed Split (num_outputs), and onnx2torch has no converter for that version: refused at submit.
    split = {**info, "op_types": {**info["op_types"], "Split": 1}}
    problems = dict(check_pass(ObsPruneConfig(sparsity=0.5), SubmitContext(model=split, calibration=CALIBRATION)))
    assert problems and "Split (version 18)" in next(iter(problems.values()))
    assert "FusedConv" in (onnx_import_problem({"com.microsoft.FusedConv": 1}, [[1, 3]], 17) or "")
    assert onnx_import_problem({"Conv": 1, "ReduceMean": 1}, [["batch", 3]], 17) is None


@pytest.mark.parametrize("spec", [
    {"type": "prune", "method": "obs", "sparsity": 0.5, "hessian": "inputs", "num_gradients": 8},
    {"type": "prune", "method": "structured", "sparsity": 0.5},
], ids=["obs", "structured"])
def test_the_torch_prune_methods_run_on_a_dynamo_resnet(resnet_dynamo: Path, spec: dict[str, object],
                                                        tmp_path: Path) -> None:
    """Converted to torch, pruned, exported back: the run checks the export on twice the sample's batch, and the
    artifact runs on a batch of 3."""
    from deepopt_core import optimize

    np.savez(tmp_path / "calibration.npz", **_pixels(8))
    result = optimize(resnet_dynamo, [spec], {"calibration": tmp_path / "calibration.npz"}, ["onnx"],
                      workdir=tmp_path / "run", benchmark={"batch_sizes": [1], "runs": 1, "warmup": 0, "threads": 1})
    assert [d["type"] for d in result.decisions][:1] == ["import"]
    pruned = inference_session(Path(next(a.path for a in result.artifacts if a.kind == "model")).read_bytes())
    assert pruned.run(None, _pixels(3))[0].shape == (3, mm.NUM_LABELS)


def test_dynamic_quantization_of_a_dynamo_resnet_runs_at_other_batch_sizes(resnet_dynamo: Path,
                                                                            tmp_path: Path) -> None:
    from deepopt_core.passes.quantize.ort_dynamic import quantize_dynamic

    decisions = quantize_dynamic(resnet_dynamo, tmp_path / "int8.onnx", eval_feeds=[_pixels(2)])
    assert decisions["settings"]["gemm_rewritten_as_matmul"] == 1
    quantized = inference_session((tmp_path / "int8.onnx").read_bytes())
    reference = inference_session(resnet_dynamo.read_bytes())
    for rows in (1, 5):
        got = quantized.run(None, _pixels(rows))[0]
        expected = reference.run(None, _pixels(rows))[0]
        assert got.shape == (rows, mm.NUM_LABELS)
        assert np.abs(got - expected).max() <= 0.05 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("weight_as_input", [False, True])
def test_gemm_to_matmul_drops_the_stale_shape_of_a_weight_it_transposes(weight_as_input: bool) -> None:
    from deepopt_core.passes.quantize.ort_common import gemm_to_matmul

    weight = numpy_helper.from_array(np.ones((4, 8), np.float32), "fc.weight")
    weight_shape = helper.make_tensor_value_info("fc.weight", TensorProto.FLOAT, [4, 8])
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])] + [weight_shape] * weight_as_input,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight],
        value_info=[weight_shape] * (not weight_as_input))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert gemm_to_matmul(model) == 1
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # raised "existing shape differ" before
    assert [v.name for v in model.graph.value_info] == []
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert shapes == {"x": ["batch", 8], **({"fc.weight": [8, 4]} if weight_as_input else {})}


def _reduce_model(op: str, axes: list[int] | None, keepdims: int, noop: int = 0) -> onnx.ModelProto:
    inputs = ["x"] + (["axes"] if axes is not None else [])
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims, **({"noop_with_empty_axes": noop} if noop else {}))
    inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")] if axes is not None else []
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                                "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"])
@pytest.mark.parametrize(("axes", "keepdims"), [([-1, -2], 1), ([1, -1], 0), ([], 0), (None, 1)])
def test_opset_18_reduce_ops_with_constant_axes_convert_exactly(op: str, axes: list[int] | None,
                                                                keepdims: int) -> None:
    from deepopt_core.formats.onnx_torch import onnx_to_torch

    x = {"x": np.random.default_rng(0).uniform(0.5, 1.5, size=(2, 3, 4, 5)).astype(np.float32)}
    _, report = onnx_to_torch(_reduce_model(op, axes, keepdims), x, ["x"])  # raises when it differs from ORT
    assert report["max_abs_diff_vs_onnxruntime"] <= 1e-4


def test_a_reduce_with_empty_axes_and_noop_is_the_identity() -> None:
    x = {"x": np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)}
    from deepopt_core.formats.onnx_torch import OnnxReduce, onnx_to_torch

    module, _ = onnx_to_torch(_reduce_model("ReduceMean", [], 1, noop=1), x, ["x"])  # raises when not the same
    assert not any(isinstance(layer, OnnxReduce) for layer in module.modules())


def test_reduce_axes_computed_while_running_and_reshapes_to_a_zero_with_allowzero_are_refused() -> None:
    from deepopt_core.formats.onnx_torch import onnx_to_torch

    x = {"x": np.ones((2, 3), np.float32)}
    mean = helper.make_node("ReduceMean", ["x", "axes"], ["y"])
    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["axes"], start=-1), mean], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(PassFailed, match="axes computed while the graph runs"):
        onnx_to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), x, ["x"])
    reshape = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)
    graph = helper.make_graph([reshape], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([0, 3], np.int64), "shape")])
    with pytest.raises(PassFailed, match="allowzero=1 to a shape with a 0"):
        onnx_to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
                      {"x": np.ones((0, 3), np.float32)}, ["x"])
