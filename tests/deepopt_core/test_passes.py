"""Each pass on ONNX and on torch: sparsity patterns, quantized graphs, and accuracy against the fp32 original."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from deepopt_core.datasets import load_dataset
from deepopt_core.errors import PassFailed
from deepopt_core.formats import inspect_model, load_torch_model
from deepopt_core.formats.onnx_inspect import load_onnx
from deepopt_core.formats.torch_common import run_module
from deepopt_core.passes.context import PassContext
from deepopt_core.passes.prune import impl as prune
from deepopt_core.passes.prune.config import MagnitudePruneConfig
from deepopt_core.passes.quantize import impl as quantize
from deepopt_core.passes.quantize.config import DynamicQuantizeConfig
from deepopt_core.sparsity import onnx_sparsity, torch_sparsity

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def eval_data(digits):
    data = load_dataset(digits["eval"])
    return data.arrays["input"], data.labels


def _ctx(tmp_path, info):
    return PassContext(workdir=tmp_path, info=info, sample={"input": np.zeros((2, 64), np.float32)})


def _onnx_accuracy(model: onnx.ModelProto, x, y) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(1) == y).mean())


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_prune_onnx_global_zeroes_the_smallest_weights(digits, tmp_path):
    original = load_onnx(digits["onnx"])
    ctx = _ctx(tmp_path, inspect_model(digits["onnx"]))
    pruned = prune.apply_onnx(MagnitudePruneConfig(sparsity=0.5), original, ctx)
    before, after = _weights(original), _weights(pruned)
    names = ["fc1.weight", "fc2.weight", "fc3.weight"]
    total = sum(before[n].size for n in names)
    zeros = sum(int((after[n] == 0).sum()) for n in names)
    assert zeros == round(0.5 * total)
    largest_pruned = max(np.abs(before[n][after[n] == 0]).max() for n in names)
    smallest_kept = min(np.abs(before[n][after[n] != 0]).min() for n in names)
    assert largest_pruned <= smallest_kept
    for name in ("fc1.bias", "fc2.bias", "fc3.bias"):
        np.testing.assert_array_equal(before[name], after[name])
    assert ctx.decisions["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert set(ctx.decisions["layers"]) == {"fc1", "fc2", "fc3"}
    assert onnx_sparsity(original).sparsity == 0.0


def test_prune_onnx_per_layer_with_exclude(digits, tmp_path):
    ctx = _ctx(tmp_path, inspect_model(digits["onnx"]))
    spec = MagnitudePruneConfig(sparsity=0.3, scope="layer", exclude=["fc3", "nope"])
    pruned = prune.apply_onnx(spec, load_onnx(digits["onnx"]), ctx)
    report = onnx_sparsity(pruned)
    assert report.layers["fc1"] == pytest.approx(0.3, abs=1e-3)
    assert report.layers["fc2"] == pytest.approx(0.3, abs=1e-3)
    assert report.layers["fc3"] == 0.0
    assert ctx.decisions["excluded"] == ["fc3"]
    assert any("nope" in w for w in ctx.warnings)


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_prune_torch_modules(digits, tmp_path, fmt, eval_data):
    module, _ = load_torch_model(digits[fmt], fmt)
    ctx = _ctx(tmp_path, inspect_model(digits[fmt]))
    module = prune.apply_torch(MagnitudePruneConfig(sparsity=0.5, scope="layer"), module, ctx)
    assert ctx.decisions["layers"] == {"fc1": 0.5, "fc2": 0.5, "fc3": 0.5}
    assert torch_sparsity(module).sparsity == pytest.approx(0.5)
    x, y = eval_data
    assert (run_module(module, {"input": x}, ["input"])[0].argmax(1) == y).mean() > 0.9


def test_gemm_rewrite_keeps_outputs(digits, eval_data):
    model = load_onnx(digits["onnx"])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert quantize.gemm_to_matmul(rewritten) == 3
    assert {n.op_type for n in rewritten.graph.node} == {"MatMul", "Add", "Relu"}
    onnx.checker.check_model(rewritten)
    x, _ = eval_data
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"input": x})[0]
    np.testing.assert_allclose(run(model), run(rewritten), rtol=1e-5, atol=1e-5)


def test_headline_prune_half_and_int8_keeps_accuracy_and_shrinks(digits, tmp_path, eval_data):
    """Prune 50% + dynamic int8: within 2 accuracy points of fp32, and at most 0.35x the size."""
    x, y = eval_data
    original = load_onnx(digits["onnx"])
    ctx = _ctx(tmp_path, inspect_model(digits["onnx"]))
    pruned = prune.apply_onnx(MagnitudePruneConfig(sparsity=0.5), original, ctx)
    quantized = quantize.apply_onnx(DynamicQuantizeConfig(), pruned, ctx)
    assert ctx.decisions["quantized_ops"] == {"MatMulInteger": 3}
    base, optimized = _onnx_accuracy(original, x, y), _onnx_accuracy(quantized, x, y)
    assert base >= 0.95
    assert optimized >= base - 0.02
    assert quantized.ByteSize() <= 0.35 * original.ByteSize()
    assert onnx_sparsity(quantized).sparsity >= 0.5


def test_quantize_onnx_options(digits, tmp_path, eval_data):
    x, y = eval_data
    ctx = _ctx(tmp_path, inspect_model(digits["onnx"]))
    spec = DynamicQuantizeConfig(weight_dtype="uint8", per_channel=True, exclude=["fc3"])
    quantized = quantize.apply_onnx(spec, load_onnx(digits["onnx"]), ctx)
    assert ctx.decisions["quantized_nodes"] == 2 and ctx.decisions["excluded"] == ["/fc3/Gemm"]
    assert _onnx_accuracy(quantized, x, y) >= 0.95
    with pytest.raises(PassFailed, match="prune before quantize"):
        prune.apply_onnx(MagnitudePruneConfig(sparsity=0.5, exclude=["fc3"]), quantized, ctx)


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_prune_and_quantize_torch_keep_accuracy(digits, tmp_path, fmt, eval_data):
    import torch

    x, y = eval_data
    module, _ = load_torch_model(digits[fmt], fmt)
    base = (run_module(module, {"input": x}, ["input"])[0].argmax(1) == y).mean()
    ctx = _ctx(tmp_path, inspect_model(digits[fmt]))
    module = prune.apply_torch(MagnitudePruneConfig(sparsity=0.5), module, ctx)
    module = quantize.apply_torch(DynamicQuantizeConfig(), module, ctx)
    assert len(ctx.decisions["quantized_layers"]) == 3
    accuracy = (run_module(module, {"input": x}, ["input"])[0].argmax(1) == y).mean()
    assert accuracy >= base - 0.02
    assert torch_sparsity(module).sparsity >= 0.5
    with warnings.catch_warnings():  # the quantized module survives TorchScript output
        warnings.simplefilter("ignore")
        from deepopt_core.formats.torchscript import load_torchscript, save_torchscript

        path = save_torchscript(module, tmp_path / "q.pt", {"input": x[:2]}, ["input"])
        reloaded = load_torchscript(path)
    assert torch.equal(torch.from_numpy(run_module(reloaded, {"input": x}, ["input"])[0]),
                       torch.from_numpy(run_module(module, {"input": x}, ["input"])[0]))


def test_quantize_torch_refuses_uint8(digits, tmp_path):
    module, _ = load_torch_model(digits["torchscript"], "torchscript")
    with pytest.raises(PassFailed, match="int8"):
        quantize.apply_torch(DynamicQuantizeConfig(weight_dtype="uint8"), module, _ctx(tmp_path, None))


def test_prune_and_quantize_hugging_face(tiny_bert_zip, tmp_path):
    info = inspect_model(tiny_bert_zip)
    module, folder = load_torch_model(tiny_bert_zip, "hf", tmp_path)
    feed = {"input_ids": np.arange(16, dtype=np.int64).reshape(2, 8) % 60,
            "attention_mask": np.ones((2, 8), np.int64), "token_type_ids": np.zeros((2, 8), np.int64)}
    names = [t.name for t in info.inputs]
    before = run_module(module, feed, names)[0]
    ctx = PassContext(workdir=tmp_path, info=info, sample=feed)
    module = prune.apply_torch(MagnitudePruneConfig(sparsity=0.2, exclude=["classifier"]), module, ctx)
    assert ctx.decisions["layers"]["classifier"] == 0.0
    assert ctx.decisions["excluded"] == ["classifier"]
    module = quantize.apply_torch(DynamicQuantizeConfig(exclude=["classifier"]), module, ctx)
    assert "classifier" not in ctx.decisions["quantized_layers"]
    assert len(ctx.decisions["quantized_layers"]) == 13
    after = run_module(module, feed, names)[0]
    assert after.shape == before.shape == (2, 3)
    assert np.isfinite(after).all()
