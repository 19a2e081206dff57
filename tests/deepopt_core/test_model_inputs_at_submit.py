"""Datasets a model cannot read (issue 15): text for a Hugging Face model without a tokenizer, and inputs of a
length an ONNX export cannot take. Each is refused at submit where the stored facts show it, and otherwise the
job's failure says the uploaded model itself does not run on these inputs, not that the output is broken."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from deepopt_core import optimize
from deepopt_core.datasets import check_dataset_for_model, inspect_dataset
from deepopt_core.errors import InvalidDataset, PassFailed
from deepopt_core.formats import inspect_model
from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.passes.distill.config import DistillConfig
from deepopt_core.passes.finetune.config import FullFinetuneConfig
from deepopt_core.passes.prune.config import MagnitudePruneConfig

pytestmark = pytest.mark.timeout(600)
BENCH = {"batch_sizes": [2], "runs": 1, "warmup": 0, "threads": 1}


def test_text_for_a_model_without_a_tokenizer_is_refused_for_every_role(tiny_bert_tar: Path, text_jsonl: Path,
                                                                         tmp_path: Path) -> None:
    info = inspect_model(tiny_bert_tar)
    assert info.format == "hf" and not info.details.get("has_tokenizer")
    text = inspect_dataset(text_jsonl)
    (problem,) = check_dataset_for_model(text, info)  # the job's dataset fields, at submit
    assert "upload the Hugging Face folder with its tokenizer" in problem and ".npz of token ids" in problem
    context = SubmitContext(model=info.model_dump(), train=text.model_dump())
    tuned = MagnitudePruneConfig(sparsity=0.5, fine_tune={"epochs": 1})
    for spec, field in ((FullFinetuneConfig(), ()), (DistillConfig(), ()), (tuned, ("fine_tune",))):
        problems = dict(check_pass(spec, context))
        assert "tokenizer" in problems.get(field, ""), (spec, problems)
    for role in ("calibration", "eval", "train"):
        with pytest.raises(InvalidDataset, match="upload the Hugging Face folder"):
            optimize(tiny_bert_tar, [{"type": "prune", "sparsity": 0.5}], {role: text_jsonl}, None,
                     workdir=tmp_path / role, benchmark=BENCH)


def export_encoder(path: Path, *, symbolic_sequence: bool) -> Path:
    """A batch-first nn.TransformerEncoder exported by the legacy exporter for sequences of 16. With
    `symbolic_sequence`, the input declares the sequence symbolic, but the exporter still bakes 16 into the
    attention's Reshape constants, so the graph only runs at that length."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 2, 64, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    axes = {0: "batch", 1: "sequence"} if symbolic_sequence else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (torch.randn(2, 16, 32),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": axes}, dynamo=False)
    return path


def test_an_encoder_exported_for_one_length_and_a_dataset_of_another(tmp_path: Path) -> None:
    dataset = tmp_path / "length24.npz"
    np.savez(dataset, x=np.random.default_rng(0).standard_normal((16, 24, 32)).astype(np.float32))
    spec = [{"type": "prune", "sparsity": 0.5}]

    fixed = export_encoder(tmp_path / "fixed.onnx", symbolic_sequence=False)  # the inspection shows the 16
    problems = check_dataset_for_model(inspect_dataset(dataset), inspect_model(fixed))
    assert problems and "needs 16 at dimension 1" in problems[0]
    with pytest.raises(InvalidDataset, match="needs 16 at dimension 1"):
        optimize(fixed, spec, {"eval": dataset}, ["onnx"], workdir=tmp_path / "fixed", benchmark=BENCH)

    baked = export_encoder(tmp_path / "baked.onnx", symbolic_sequence=True)  # declared symbolic: only running shows
    assert check_dataset_for_model(inspect_dataset(dataset), inspect_model(baked)) == []
    with pytest.raises(PassFailed) as failure:
        optimize(baked, spec, {"eval": dataset}, ["onnx"], workdir=tmp_path / "baked", benchmark=BENCH)
    message = str(failure.value)
    assert message.startswith("the uploaded model itself does not run on the job's inputs"), message
    assert "x [2, 24, 32]" in message and "dynamic axes" in message and "output does not" not in message
    # At its export length, the same job runs.
    same = tmp_path / "length16.npz"
    np.savez(same, x=np.random.default_rng(0).standard_normal((16, 16, 32)).astype(np.float32))
    result = optimize(baked, spec, {"eval": same}, ["onnx"], workdir=tmp_path / "same", benchmark=BENCH)
    assert any(a.kind == "model" for a in result.artifacts)
