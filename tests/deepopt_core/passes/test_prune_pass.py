"""The `prune` pass's methods through `deepopt_core.optimize` on the digits MLP (ONNX, TorchScript, torch.export)
and a digits CNN (ONNX): sparsity patterns measured on the saved artifacts, accuracy against the dense model,
parameter counts of structured pruning, the torch methods on ONNX uploads (converted to torch and exported back),
compact storage of pruned ONNX artifacts, the submit-time checks of every config, and where the planner runs each
method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pydantic import ValidationError

from deepopt_core import optimize
from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.passes.prune.config import (
    MagnitudePruneConfig,
    NMPruneConfig,
    ObsPruneConfig,
    StructuredPruneConfig,
)  # fmt: skip
from deepopt_core.planning import plan
from deepopt_core.specs import ModelInfo

pytestmark = pytest.mark.timeout(300)
BENCH = {"batch_sizes": [8], "runs": 3, "warmup": 1, "threads": 1}
ONNX = {"format": "onnx", "prunable_layers": 3, "op_types": {"Gemm": 3, "Relu": 2}}
EXPORT = {"format": "torch_export", "prunable_layers": 3, "op_types": {"aten.linear": 3, "aten.relu": 2}}
TS = {"format": "torchscript", "prunable_layers": 3, "op_types": {"Linear": 3, "ReLU": 2}}
ONE_LINEAR = {"format": "torch_export", "prunable_layers": 1, "op_types": {"aten.linear": 1}}
BERT = {"format": "hf", "prunable_layers": 14, "details": {"model_type": "bert"}}
GPT2 = {"format": "hf", "prunable_layers": 8, "details": {"model_type": "gpt2"}}
TRAIN = {"format": "npz", "num_rows": 64, "has_labels": True}
UNLABELLED = {"format": "npz", "num_rows": 64, "has_labels": False}


@pytest.fixture(scope="module")
def train_npz(digits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.digits import digits_split

    x, y, _, _ = digits_split(0)
    path = tmp_path_factory.mktemp("prune") / "train.npz"
    np.savez(path, input=x[:640], labels=y[:640])
    return path


def _run(digits: dict[str, Path], source: str, spec: dict[str, Any], outputs: list[str], tmp_path: Path,
         **data: Path) -> tuple[dict[str, Any], list[Any], Path]:
    result = optimize(digits[source], [spec], {"eval": digits["eval"], **data}, outputs, workdir=tmp_path,
                      benchmark=BENCH)
    decision = next(d for d in result.decisions if d["type"] == "prune")
    artifact = Path(next(a.path for a in result.artifacts if a.kind == "model"))
    return decision, result.benchmarks, artifact


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    from deepopt_core.formats.onnx_sparse import densify_onnx

    model = densify_onnx(onnx.load(str(path)))  # a pruned artifact may store its weights as sparse initializers
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight")}


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small digits CNN (Conv-BN-ReLU, Conv-ReLU, pool, Linear-ReLU, Linear), trained for a few seconds and
    exported to ONNX (the exporter folds the BatchNorm into its Conv), with its splits shaped [N, 1, 8, 8]."""
    import torch
    from torch import nn

    from deepopt_core.passes.prune.recovery import FineTune, make_batches, recover
    from examples.digits import digits_split

    x_train, y_train, x_test, y_test = digits_split(0)
    x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip
    recover(model, make_batches({"input": x_train}, 64, labels=y_train, shuffle=True),
            FineTune(epochs=6, lr=3e-3, method="task"))
    folder = tmp_path_factory.mktemp("cnn")
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(folder / "cnn.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    np.savez(folder / "eval.npz", input=x_test, labels=y_test)
    np.savez(folder / "train.npz", input=x_train[:640], labels=y_train[:640])
    return {"onnx": folder / "cnn.onnx", "eval": folder / "eval.npz", "train": folder / "train.npz"}


# ---------------------------------------------------------------------------------------------------------------
# Configs and submit-time checks (no model runs)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "fields"), [
    (MagnitudePruneConfig, {"sparsity": 1.0}),
    (MagnitudePruneConfig, {"sparsity": -0.1}),
    (ObsPruneConfig, {"sparsity": 1.5}),
    (NMPruneConfig, {"selection": "obs", "hessian": "outputs"}),
    (NMPruneConfig, {"n": 4, "m": 4}),
    (NMPruneConfig, {"n": 3, "m": 2}),
    (StructuredPruneConfig, {"sparsity": 0.5, "units": ["rows"]}),
    (MagnitudePruneConfig, {"sparsity": 0.5, "fine_tune": {"epochs": 0}}),
])  # fmt: skip
def test_bad_values_do_not_validate(config: type, fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        config(**fields)


def _problems(spec: Any, model: dict[str, Any], **data: Any) -> dict[tuple[Any, ...], str]:
    return dict(check_pass(spec, SubmitContext(model=model, **data)))


def test_submit_checks_name_the_field() -> None:
    tuned = {"sparsity": 0.5, "fine_tune": {"epochs": 1}}
    assert "train_dataset_id" in _problems(MagnitudePruneConfig(**tuned), TS)[("fine_tune",)]
    assert _problems(MagnitudePruneConfig(**tuned), TS, train=TRAIN) == {}
    assert "needs labels" in _problems(MagnitudePruneConfig(sparsity=0.5, fine_tune={"method": "task"}), TS,
                                       train=UNLABELLED)[("fine_tune", "method")]
    assert "fine_tune" in _problems(MagnitudePruneConfig(sparsity=0.5, schedule={"steps": 3}), TS)[("schedule",)]
    assert "PyTorch" not in str(_problems(MagnitudePruneConfig(sparsity=0.5), ONNX))
    assert _problems(MagnitudePruneConfig(**tuned), ONNX, train=TRAIN) == {}  # converted to torch for it
    obs = ObsPruneConfig(sparsity=0.5)
    assert "calibration_dataset_id" in _problems(obs, EXPORT)[("method",)]
    assert _problems(obs, EXPORT, calibration=UNLABELLED) == {}
    assert _problems(obs, ONNX, calibration=UNLABELLED) == {}
    assert "calibration_dataset_id" in _problems(obs, ONNX)[("method",)]
    assert "this one is TorchScript" in _problems(obs, TS, calibration=UNLABELLED)[("method",)]
    assert _problems(NMPruneConfig(), ONNX) == {}
    assert "data" in _problems(NMPruneConfig(selection="obs"), EXPORT)[("selection",)]


def test_structured_needs_prunable_structure() -> None:
    spec = StructuredPruneConfig(sparsity=0.5)
    assert _problems(spec, EXPORT) == {} and _problems(spec, BERT) == {}
    assert "no prunable structure" in _problems(spec, ONE_LINEAR)[("method",)]
    assert "no prunable structure" in _problems(spec, GPT2)[("method",)]
    assert _problems(spec, ONNX) == {}
    assert "no prunable structure" in _problems(spec, {**ONNX, "op_types": {"Gemm": 1}})[("method",)]
    assert "['heads']" in _problems(StructuredPruneConfig(sparsity=0.5, units=["heads"]), ONNX)[("units",)]
    assert "TorchScript" in _problems(spec, TS)[("method",)]
    assert "['heads']" in _problems(StructuredPruneConfig(sparsity=0.5, units=["heads"]), EXPORT)[("units",)]
    assert "data" in _problems(StructuredPruneConfig(sparsity=0.5, importance="fisher"), EXPORT)[("importance",)]
    # Named units are refused for hf output by the plan; without units, the units found on the model decide.
    assert "head counts" in (StructuredPruneConfig(sparsity=0.5, units=["heads"]).output_problem("hf") or "")
    assert StructuredPruneConfig(sparsity=0.5, units=["ffn"]).output_problem("hf") is None
    assert "scope 'global'" in (StructuredPruneConfig(sparsity=0.5, scope="global").output_problem("hf") or "")
    spec = StructuredPruneConfig(sparsity=0.5)
    assert spec.output_problem("hf") is None
    assert "head counts" in _problems(spec, BERT, outputs=["hf"])[()]
    assert _problems(spec, {**BERT, "details": {"model_type": "llama"}}, outputs=["hf"]) == {}  # FFN units only
    resnet = {**BERT, "details": {"model_type": "resnet"}}
    assert "channels or neurons" in _problems(spec, resnet, outputs=["hf"])[()]  # not "heads" on a CNN
    assert _problems(spec, resnet, outputs=["onnx"]) == {}


def test_planner_runs_torch_only_methods_before_the_onnx_export() -> None:
    obs = ObsPruneConfig(sparsity=0.5)
    (track,) = plan("torch_export", [obs, NMPruneConfig()], ["onnx"])
    assert track.export_before == 1 and track.steps == [(0, "torch"), (1, "onnx")]
    (track,) = plan("torch_export", [MagnitudePruneConfig(sparsity=0.5)], ["onnx"])
    assert track.export_before == 0 and track.steps == [(0, "onnx")]
    assert ModelInfo(format="onnx").prunable_layers == 0


def test_planner_converts_onnx_for_the_torch_methods() -> None:
    from pydantic import TypeAdapter

    from deepopt_core.specs import PassSpec

    obs, nm = ObsPruneConfig(sparsity=0.5), NMPruneConfig()
    (track,) = plan("onnx", [obs], None)
    assert (track.import_before, track.export_before, track.steps) == (0, 1, [(0, "torch")])
    magnitude = MagnitudePruneConfig(sparsity=0.3)
    tuned = StructuredPruneConfig(sparsity=0.5, fine_tune={"epochs": 1})
    (track,) = plan("onnx", [magnitude, obs, nm, tuned, nm], ["onnx"])
    assert (track.import_before, track.export_before) == (1, 4)  # one conversion, one export
    assert track.steps == [(0, "onnx"), (1, "torch"), (2, "torch"), (3, "torch"), (4, "onnx")]
    (track,) = plan("onnx", [magnitude, nm], None)
    assert track.import_before is None and track.steps == [(0, "onnx"), (1, "onnx")]
    with pytest.raises(ValueError, match="needs a PyTorch model"):  # other passes are not converted for
        plan("onnx", TypeAdapter(list[PassSpec]).validate_python([{"type": "finetune"}]), None)


# ---------------------------------------------------------------------------------------------------------------
# Through the pipeline, on the real digits MLP
# ---------------------------------------------------------------------------------------------------------------


def test_nm_on_onnx_has_the_pattern_and_keeps_accuracy(digits: dict[str, Path], tmp_path: Path) -> None:
    decision, (original, pruned), artifact = _run(digits, "onnx", {"type": "prune", "method": "nm"}, ["onnx"],
                                                  tmp_path)
    weights = _onnx_weights(artifact)
    for name in ("fc1.weight", "fc2.weight"):  # Gemm with transB: [out, in], groups of 4 along the input
        groups = weights[name].reshape(weights[name].shape[0], -1, 4)
        assert ((groups != 0).sum(-1) <= 2).all() and (weights[name] == 0).mean() == 0.5
    assert (weights["fc3.weight"] != 0).all()  # the head stays dense
    assert decision["verification"]["ok"] and decision["layers"] == {"fc1": 0.5, "fc2": 0.5, "fc3": 0.0}
    assert decision["storage"]["dense_bytes"] > 0
    assert pruned.sparsity == pytest.approx(decision["sparsity"]) and 0.45 < pruned.sparsity < 0.5
    assert pruned.metrics["accuracy"] >= original.metrics["accuracy"] - 0.03


def test_obs_on_torch_export_beats_magnitude(digits: dict[str, Path], tmp_path: Path) -> None:
    spec = {"type": "prune", "sparsity": 0.85, "scope": "layer", "keep_head": True}
    obs, (original, with_obs), _ = _run(digits, "torch_export", {**spec, "method": "obs", "num_gradients": 128},
                                        ["torch_export"], tmp_path / "obs", calibration=digits["calibration"])
    magnitude, (_, with_magnitude), _ = _run(digits, "torch_export", {**spec, "method": "magnitude"},
                                             ["torch_export"], tmp_path / "mag")
    assert obs["layers"]["fc1"] == pytest.approx(0.85, abs=1e-3) and obs["layers"]["fc3"] == 0.0
    assert with_obs.sparsity == pytest.approx(obs["sparsity"], abs=1e-6)
    assert magnitude["layers"] == pytest.approx(obs["layers"], abs=1e-3)
    assert obs["block_size"] == 32 and obs["seconds"] > 0
    assert with_obs.metrics["accuracy"] >= original.metrics["accuracy"] - 0.03
    assert with_obs.metrics["accuracy"] > with_magnitude.metrics["accuracy"] + 0.01


def test_structured_shrinks_the_onnx_output_and_recovers(digits: dict[str, Path], train_npz: Path,
                                                        tmp_path: Path) -> None:
    spec = {"type": "prune", "method": "structured", "sparsity": 0.5, "fine_tune": {"epochs": 3, "lr": 3e-3}}
    decision, (original, pruned), artifact = _run(digits, "torch_export", spec, ["onnx"], tmp_path,
                                                  train=train_npz)
    assert decision["params_before"] == 17226 and decision["params_after"] == pruned.num_parameters < 0.5 * 17226
    assert decision["groups"]["fc1"] == {"kind": "neurons", "before": 128, "kept": 64}
    assert decision["groups"]["fc2"] == {"kind": "neurons", "before": 64, "kept": 32}
    weights = _onnx_weights(artifact)
    assert weights["fc1.weight"].shape == (64, 64) and weights["fc3.weight"].shape == (10, 32)
    assert pruned.metrics["accuracy"] >= original.metrics["accuracy"] - 0.03
    assert decision["recovery"]["method"] == "task" and decision["fine_tune"]["epochs"] == 3


def test_gradual_magnitude_on_torchscript_with_fine_tuning(digits: dict[str, Path], train_npz: Path,
                                                           tmp_path: Path) -> None:
    spec = {"type": "prune", "sparsity": 0.9, "schedule": {"steps": 3}, "fine_tune": {"epochs": 2, "lr": 2e-3},
            "keep_head": True}
    decision, (original, pruned), _ = _run(digits, "torchscript", spec, ["torchscript"], tmp_path, train=train_npz)
    assert [s["target"] for s in decision["steps"]] == pytest.approx([0.6333, 0.8667, 0.9], abs=1e-3)
    assert decision["pruned_sparsity"] == pytest.approx(0.9, abs=1e-3) and decision["layers"]["fc3"] == 0.0
    assert pruned.sparsity == pytest.approx(decision["sparsity"], abs=1e-6)
    assert pruned.metrics["accuracy"] >= original.metrics["accuracy"] - 0.03


# ---------------------------------------------------------------------------------------------------------------
# The torch methods on ONNX uploads (converted with onnx2torch, exported back) and compact ONNX artifacts
# ---------------------------------------------------------------------------------------------------------------


def _ort_outputs(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_obs_on_an_onnx_upload(digits: dict[str, Path], tmp_path: Path) -> None:
    spec = {"type": "prune", "sparsity": 0.85, "scope": "layer", "keep_head": True}
    result = optimize(digits["onnx"], [{**spec, "method": "obs", "num_gradients": 128}],
                      {"eval": digits["eval"], "calibration": digits["calibration"]}, None, workdir=tmp_path / "obs",
                      benchmark=BENCH)
    converted, obs, exported = result.decisions
    assert converted["type"] == "import" and converted["converted_layers"] == ["fc1", "fc2", "fc3"]
    assert converted["max_abs_diff_vs_onnxruntime"] < 1e-4 and exported["type"] == "export"
    assert obs["representation"] == "torch" and obs["layers"] == pytest.approx(
        {"fc1": 0.85, "fc2": 0.85, "fc3": 0.0}, abs=1e-3)
    (artifact,) = result.artifacts[:1]
    weights = _onnx_weights(Path(artifact.path))
    assert (weights["fc1.weight"] == 0).mean() == pytest.approx(0.85, abs=1e-3) and (weights["fc3.weight"] != 0).all()
    original, with_obs = result.benchmarks
    assert with_obs.sparsity == pytest.approx(obs["sparsity"], abs=1e-6)
    assert with_obs.metrics["accuracy"] >= original.metrics["accuracy"] - 0.03
    _, (_, with_magnitude), _ = _run(digits, "onnx", {**spec, "method": "magnitude"}, ["onnx"], tmp_path / "mag")
    assert with_obs.metrics["accuracy"] > with_magnitude.metrics["accuracy"] + 0.01


def test_obs_with_input_hessians_on_an_onnx_upload(digits: dict[str, Path], tmp_path: Path) -> None:
    spec = {"type": "prune", "method": "obs", "hessian": "inputs", "sparsity": 0.85, "keep_head": True,
            "num_gradients": 256}
    result = optimize(digits["onnx"], [spec], {"eval": digits["eval"], "calibration": digits["calibration"]}, None,
                      workdir=tmp_path / "obs", benchmark=BENCH)
    _, obs, _ = result.decisions
    assert obs["hessian"] == "inputs" and obs["forward_passes"] == 2  # fc1, fc2 (the head stays dense)
    assert obs["layers"] == pytest.approx({"fc1": 0.85, "fc2": 0.85, "fc3": 0.0}, abs=1e-3)
    original, pruned = result.benchmarks
    assert pruned.metrics["accuracy"] >= original.metrics["accuracy"] - 0.03
    magnitude = {"type": "prune", "method": "magnitude", "sparsity": 0.85, "scope": "layer", "keep_head": True}
    _, (_, with_magnitude), _ = _run(digits, "onnx", magnitude, ["onnx"], tmp_path / "mag")
    assert pruned.metrics["accuracy"] > with_magnitude.metrics["accuracy"] + 0.01


def test_structured_channels_on_an_onnx_cnn(cnn_onnx: dict[str, Path], tmp_path: Path) -> None:
    spec = {"type": "prune", "method": "structured", "sparsity": 0.5, "fine_tune": {"epochs": 4, "lr": 3e-3}}
    result = optimize(cnn_onnx["onnx"], [spec], {"eval": cnn_onnx["eval"], "train": cnn_onnx["train"]}, ["onnx"],
                      workdir=tmp_path, benchmark=BENCH)
    decision = next(d for d in result.decisions if d["type"] == "prune")
    # The first Conv's weight has an exporter-made name, so the layer is named after its node (as on ONNX).
    assert decision["groups"] == {
        "/0/Conv": {"kind": "channels", "before": 8, "kept": 4}, "3": {"kind": "channels", "before": 16, "kept": 8},
        "7": {"kind": "neurons", "before": 32, "kept": 16}}  # fmt: skip
    original, pruned = result.benchmarks
    assert original.num_parameters == decision["params_before"] == 9802
    assert pruned.num_parameters == decision["params_after"] < 0.5 * 9802
    shapes = {t.name: tuple(t.dims) for t in onnx.load(result.artifacts[0].path).graph.initializer}
    assert shapes["3.weight"] == (8, 4, 3, 3) and shapes["7.weight"] == (16, 128)
    assert pruned.metrics["accuracy"] >= original.metrics["accuracy"] - 0.04
    assert pruned.latency_ms_p50 is not None


def test_gradual_magnitude_on_onnx_is_stored_compactly(digits: dict[str, Path], train_npz: Path,
                                                       tmp_path: Path) -> None:
    spec = {"type": "prune", "sparsity": 0.9, "scope": "layer", "keep_head": True, "schedule": {"steps": 3},
            "fine_tune": {"epochs": 3, "lr": 2e-3}}
    decision, (original, pruned), artifact = _run(digits, "onnx", spec, ["onnx"], tmp_path, train=train_npz)
    assert decision["representation"] == "torch" and decision["fine_tune"]["epochs"] == 3
    assert decision["layers"] == pytest.approx({"fc1": 0.9, "fc2": 0.9, "fc3": 0.0}, abs=1e-3)
    assert pruned.metrics["accuracy"] >= original.metrics["accuracy"] - 0.03
    # The artifact holds its weights as sparse initializers: much smaller than dense, the same outputs.
    storage = pruned.metrics["storage"]
    stored = onnx.load(str(artifact))
    assert storage["layout"] == "sparse_initializers" and len(stored.graph.sparse_initializer) == 2
    assert sorted(storage["sparse_initializers"]) == ["fc1.weight", "fc2.weight"]
    assert storage["stored_bytes"] == artifact.stat().st_size == pruned.size_bytes < 0.4 * storage["dense_bytes"]
    assert storage["gzip_bytes"] < 0.75 * storage["stored_bytes"]
    assert pruned.size_bytes < 0.4 * original.size_bytes and pruned.sparsity == pytest.approx(decision["sparsity"])
    onnx.checker.check_model(stored)
    from deepopt_core.formats.onnx_sparse import densify_onnx

    x = np.load(digits["eval"])["input"][:64]
    np.testing.assert_array_equal(_ort_outputs(artifact, x), _ort_outputs(densify_onnx(stored), x))
    # 2:4 leaves 50% zeros, which sparse initializers do not make smaller: that artifact stays dense.
    _, (_, nm), nm_artifact = _run(digits, "onnx", {"type": "prune", "method": "nm"}, ["onnx"], tmp_path / "nm")
    assert nm.metrics["storage"]["layout"] == "dense" and not onnx.load(str(nm_artifact)).graph.sparse_initializer


def test_onnx_conversion_refuses_ops_it_lacks() -> None:
    import importlib.util
    import sys

    from onnx import TensorProto, helper

    from deepopt_core.errors import PassFailed
    from deepopt_core.formats.onnx_torch import load_converter, onnx_to_torch

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Hardmax", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], initializer=[weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(PassFailed, match="cannot be converted to PyTorch.*Hardmax"):
        onnx_to_torch(model, {"x": np.ones((2, 4), np.float32)}, ["x"])
    load_converter()  # the torchvision stand-in is gone after the import (other libraries probe for torchvision)
    assert "torchvision" not in sys.modules or importlib.util.find_spec("torchvision") is not None


def test_a_bert_onnx_export_is_refused_with_the_reason(tmp_path: Path) -> None:
    """A 2-layer BERT exported by the TorchScript-based exporter (random weights) converts and matches ONNX Runtime
    (shared weights behind Identity nodes folded, Flatten with axis 0, GreaterOrEqual of opset 16); but the export
    back would keep the sample's batch size (onnx2torch computes the attention mask's shapes in Python, and pruning
    found no heads or FFN blocks in the converted graph), so a job is refused before converting, from the Shape ops
    its inspection records (issue 15: the same predicate as at submit), instead of failing after pruning."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from deepopt_core.errors import PassFailed

    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.randint(5, 200, (2, 12))
    token_axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(Logits(), (ids, torch.ones_like(ids)), str(tmp_path / "bert.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"input_ids": token_axes, "attention_mask": token_axes, "logits": {0: "batch"}},
                      dynamo=False)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input_ids=rng.integers(5, 200, (64, 12)),
             attention_mask=np.ones((64, 12), np.int64))
    bench = {"batch_sizes": [4], "runs": 2, "warmup": 1, "threads": 1}
    obs_spec = {"type": "prune", "method": "obs", "sparsity": 0.5, "num_gradients": 32}
    events: list[str] = []
    with pytest.raises(PassFailed, match="computes shapes while it runs"):
        optimize(tmp_path / "bert.onnx", [obs_spec], {"calibration": tmp_path / "calib.npz"}, None,
                 workdir=tmp_path / "obs", benchmark=bench, on_progress=lambda _f, stage: events.append(stage))
    assert "prune" not in events  # refused before converting, not after pruning
    from deepopt_core.formats.onnx_torch import onnx_to_torch

    sample = {"input_ids": ids.numpy(), "attention_mask": np.ones((2, 12), np.int64)}
    module, report = onnx_to_torch(onnx.load(str(tmp_path / "bert.onnx")), sample, ["input_ids", "attention_mask"])
    assert report["max_abs_diff_vs_onnxruntime"] < 1e-4
    names = report["converted_layers"]  # named as on the ONNX path: the node's name, else the weight's
    assert "/m/bert/encoder/layer.0/attention/self/query/MatMul" in names and "m.classifier" in names
    with pytest.raises(PassFailed, match="computes shapes while it runs"):
        optimize(tmp_path / "bert.onnx", [{"type": "prune", "method": "structured", "sparsity": 0.5}],
                 {"calibration": tmp_path / "calib.npz"}, None, workdir=tmp_path / "structured", benchmark=bench)
