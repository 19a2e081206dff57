"""fp16/bf16 of a TorchScript upload with TorchScript output: a trace of a transformer writes its attention mask
as float32 (``aten::zeros(..., dtype=torch.float32)``, ``aten::to(float32)``), so the half-precision copy met float32
activations and the job failed after acceptance (MiniLM, RoBERTa, ViT: "expected m1 and m2 to have the same
dtype"). Inspection lists those ops and the submit check refuses the cell; CNNs' traces have none and still run."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter

from benchmarks import matrix_models as mm
from deepopt_core.formats.torchscript import inspect_torchscript
from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.specs import PassSpec

pytestmark = pytest.mark.timeout(300)
SPECS = TypeAdapter(PassSpec)


@pytest.mark.parametrize("name", ["minilm", "vit", "resnet", "bn_depthwise_cnn"])
def test_fixed_float32_ops_are_found_and_refuse_half_torchscript_outputs(name: str) -> None:
    info = inspect_torchscript(mm.model_file(mm.BY_NAME[name], "torchscript")).model_dump()
    fixed = info["details"]["float32_ops"]
    assert bool(fixed) == (name in ("minilm", "vit"))
    for mode in ("fp16", "bf16"):
        spec = SPECS.validate_python({"type": "quantize", "mode": mode})
        refused = dict(check_pass(spec, SubmitContext(model=info, outputs=["torchscript"])))
        assert (("mode",) in refused) == bool(fixed)
        if fixed:
            assert "'onnx'" in refused[("mode",)] and fixed[0] in refused[("mode",)]
        assert dict(check_pass(spec, SubmitContext(model=info, outputs=["onnx"]))) == {}


def test_the_half_copy_of_a_graph_without_fixed_float32_runs(tmp_path: Path) -> None:
    from deepopt_core import optimize

    arch = mm.BY_NAME["bn_depthwise_cnn"]
    result = optimize(mm.model_file(arch, "torchscript"), [{"type": "quantize", "mode": "fp16"}], None,
                      ["torchscript"], workdir=tmp_path, benchmark={"batch_sizes": [1], "runs": 1, "warmup": 0,
                                                                    "threads": 1})
    assert [a.format for a in result.artifacts if a.kind == "model"] == ["torchscript"]
    assert result.benchmarks[1].metrics["fidelity_cosine"] > 0.99
