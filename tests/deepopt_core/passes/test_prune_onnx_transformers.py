"""The torch-only prune settings on ONNX transformer exports (issue 15): ViT, GPT-2 and Qwen2 from small configs,
exported with torch.onnx.export, compute shapes while they run, which the conversion to torch cannot keep. The
submit check refuses them from the stored inspection, naming the field and what to do instead, and the run
refuses them with the same predicate (:func:`deepopt_core.planning.onnx_import_problem`) before converting; MLPs
and CNNs exported with Flatten still pass both."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepopt_core import optimize
from deepopt_core.errors import PassFailed
from deepopt_core.formats import inspect_model
from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.passes.prune.config import (
    MagnitudePruneConfig,
    NMPruneConfig,
    ObsPruneConfig,
    StructuredPruneConfig,
)  # fmt: skip
from deepopt_core.planning import onnx_import_problem

pytestmark = pytest.mark.timeout(600)
BENCH = {"batch_sizes": [2], "runs": 1, "warmup": 0, "threads": 1}
CALIBRATION = {"format": "npz", "num_rows": 16, "has_labels": False}
TRAIN = {"format": "npz", "num_rows": 16, "has_labels": True}


def export_transformer(kind: str, folder: Path, opset: int | None = None) -> tuple[Path, Path]:
    """A small ViT / GPT-2 / Qwen2 backbone as ONNX (legacy exporter, symbolic batch) and a calibration .npz."""
    import torch
    from torch import nn
    from transformers import GPT2Config, GPT2Model, Qwen2Config, Qwen2Model, ViTConfig, ViTModel

    torch.manual_seed(0)
    sample: Any
    if kind == "vit":
        model: nn.Module = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=64, image_size=16, patch_size=8),
                                    add_pooling_layer=False)
        name, sample, axes = "pixel_values", torch.randn(2, 3, 16, 16), {0: "batch"}
    elif kind == "gpt2":
        model = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100, n_positions=64))
        name, sample, axes = "input_ids", torch.randint(0, 100, (2, 8)), {0: "batch", 1: "sequence"}
    else:
        model = Qwen2Model(Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                                       max_position_embeddings=64, attn_implementation="eager"))
        name, sample, axes = "input_ids", torch.randint(0, 100, (2, 8)), {0: "batch", 1: "sequence"}

    class Hidden(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).last_hidden_state

    path = folder / f"{kind}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(model.eval()), (sample,), str(path), input_names=[name], output_names=["hidden"],
                          dynamic_axes={name: axes, "hidden": {0: "batch"}}, dynamo=False,
                          **({"opset_version": opset} if opset else {}))
    calibration = folder / f"{kind}.npz"
    np.savez(calibration, **{name: torch.cat([sample] * 8).numpy()})
    return path, calibration


@pytest.fixture(scope="module")
def transformers_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("onnx_transformers")
    return {kind: export_transformer(kind, folder) for kind in ("vit", "gpt2", "qwen2")}


TORCH_ONLY = [
    (ObsPruneConfig(sparsity=0.5), ("method",)),
    (ObsPruneConfig(sparsity=0.5, hessian="inputs"), ("method",)),
    (StructuredPruneConfig(sparsity=0.5), ("method",)),
    (NMPruneConfig(selection="obs"), ("selection",)),
    (MagnitudePruneConfig(sparsity=0.5, fine_tune={"epochs": 1}), ("fine_tune",)),
    (MagnitudePruneConfig(sparsity=0.5, schedule={"steps": 2}, fine_tune={"epochs": 1}), ("fine_tune",)),
]


@pytest.mark.parametrize("kind", ["vit", "gpt2", "qwen2"])
def test_torch_only_settings_on_onnx_transformers_are_refused_at_submit(
        kind: str, transformers_onnx: dict[str, tuple[Path, Path]]) -> None:
    info = inspect_model(transformers_onnx[kind][0]).model_dump()
    context = SubmitContext(model=info, calibration=CALIBRATION, train=TRAIN)
    for spec, field in TORCH_ONLY:
        problems = dict(check_pass(spec, context))
        assert field in problems, (spec, problems)
        assert "Hugging Face folder" in problems[field] and "magnitude" in problems[field]
    # What runs on the ONNX graph itself stays accepted.
    assert check_pass(MagnitudePruneConfig(sparsity=0.5), context) == []
    assert check_pass(NMPruneConfig(), context) == []


@pytest.mark.parametrize("kind", ["vit", "gpt2", "qwen2"])
def test_the_run_refuses_them_with_the_same_predicate(kind: str, transformers_onnx: dict[str, tuple[Path, Path]],
                                                      tmp_path: Path) -> None:
    path, calibration = transformers_onnx[kind]
    info = inspect_model(path)
    expected = onnx_import_problem(info.op_types, [t.shape for t in info.inputs], info.opset)
    assert expected is not None
    with pytest.raises(PassFailed) as failure:
        optimize(path, [{"type": "prune", "method": "obs", "sparsity": 0.5, "num_gradients": 8}],
                 {"calibration": calibration}, ["onnx"], workdir=tmp_path, benchmark=BENCH)
    assert expected in str(failure.value)


def test_an_older_opset_export_that_used_to_fail_after_pruning_is_refused_before_converting(tmp_path: Path) -> None:
    """Opset 17: onnx2torch converts the ViT (Shape has a converter there) and the export back would fix the
    batch size; the job failed after pruning with 'do not support this ONNX model yet'."""
    path, calibration = export_transformer("vit", tmp_path, opset=17)
    info = inspect_model(path).model_dump()
    assert ("method",) in dict(check_pass(ObsPruneConfig(sparsity=0.5), SubmitContext(model=info,
                                                                                       calibration=CALIBRATION)))
    with pytest.raises(PassFailed, match="computes shapes while it runs"):
        optimize(path, [{"type": "prune", "method": "obs", "sparsity": 0.5, "num_gradients": 8}],
                 {"calibration": calibration}, ["onnx"], workdir=tmp_path / "run", benchmark=BENCH)


def test_the_predicate_passes_fixed_shapes_and_graphs_without_shape_ops(digits: dict[str, Path]) -> None:
    digits_info = inspect_model(digits["onnx"])
    assert onnx_import_problem(digits_info.op_types, [t.shape for t in digits_info.inputs]) is None
    assert onnx_import_problem({"Shape": 2, "MatMul": 1}, [[1, 8]]) is None  # fixed shapes stay fixed
    assert onnx_import_problem({"Shape": 2, "MatMul": 1}, [["batch", 8]]) is not None
    assert onnx_import_problem({"Size": 1}, [None]) is not None
