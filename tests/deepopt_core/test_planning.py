"""The planner: tracks, where export happens, and the combinations it refuses."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from deepopt_core.planning import PlanError, plan
from deepopt_core.specs import PassSpec

SPECS = TypeAdapter(list[PassSpec])
PRUNE = {"type": "prune", "sparsity": 0.5}
QUANT = {"type": "quantize"}
EXPORT = {"type": "export", "opset": 18}


def _plan(fmt, passes, outputs=None):
    return plan(fmt, SPECS.validate_python(passes), outputs)


def test_onnx_source_runs_everything_on_onnx():
    (track,) = _plan("onnx", [PRUNE, QUANT])
    assert track.representation == "onnx" and track.outputs == ["onnx"]
    assert track.steps == [(0, "onnx"), (1, "onnx")] and track.export_before is None


def test_torch_source_default_output_is_its_format():
    (track,) = _plan("torchscript", [PRUNE, QUANT])
    assert track.representation == "torch" and track.outputs == ["torchscript"]
    assert track.steps == [(0, "torch"), (1, "torch")]


def test_torch_source_to_onnx_exports_first():
    (track,) = _plan("torchscript", [PRUNE, QUANT], ["onnx"])
    assert track.export_before == 0 and track.steps == [(0, "onnx"), (1, "onnx")]


def test_explicit_export_moves_the_export():
    (track,) = _plan("torch_export", [PRUNE, EXPORT, QUANT])
    assert track.outputs == ["onnx"]
    assert track.export_before == 1 and track.steps == [(0, "torch"), (2, "onnx")]


def test_two_tracks():
    tracks = _plan("hf", [PRUNE], ["hf", "onnx"])
    assert [t.representation for t in tracks] == ["torch", "onnx"]


@pytest.mark.parametrize(("fmt", "passes", "outputs", "message"), [
    ("onnx", [EXPORT], None, "export converts PyTorch models"),
    ("onnx", [PRUNE], ["torchscript"], "needs a PyTorch model"),
    ("torchscript", [PRUNE], ["hf"], "needs a Hugging Face model"),
    ("torchscript", [PRUNE], ["torch_export"], "cannot be re-exported with torch.export"),
    ("torch_export", [QUANT], ["torch_export"], "cannot be saved as a torch.export"),
    ("hf", [QUANT], ["hf"], "cannot be saved as safetensors"),
    ("torchscript", [{"type": "quantize", "weight_dtype": "uint8"}], None, "uint8"),
])  # fmt: skip
def test_refused_combinations(fmt, passes, outputs, message):
    with pytest.raises(PlanError, match=message):
        _plan(fmt, passes, outputs)


def test_uint8_quantization_is_fine_on_onnx_tracks():
    (track,) = _plan("torchscript", [{"type": "quantize", "weight_dtype": "uint8"}], ["onnx"])
    assert track.steps == [(0, "onnx")]


def test_prune_submit_check_needs_prunable_layers():
    from deepopt_core.passes.base import SubmitContext, check_pass
    from deepopt_core.passes.prune.config import MagnitudePruneConfig

    spec = MagnitudePruneConfig(sparsity=0.5)
    assert check_pass(spec, SubmitContext(model={"prunable_layers": 3})) == []
    ((loc, message),) = check_pass(spec, SubmitContext(model={"prunable_layers": 0}))
    assert loc == ("sparsity",) and "no Linear/Conv" in message
