"""The ONNX quantization modes (`deepopt_core.passes.quantize.ort_*`) on small real models.

Two models are built once per module: a CNN trained for a few seconds on scikit-learn's 8x8 digits, and a
2-layer BERT (`BertConfig`, random weights, eager attention, legacy exporter) with varied sequence lengths.
Each test checks the quality of the result against fp32 (accuracy or cosine fidelity), not only that it ran.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from deepopt_core.passes.quantize.ort_common import Outputs, accuracy_metric, run_outputs, verify
from deepopt_core.passes.quantize.ort_dynamic import quantize_dynamic
from deepopt_core.passes.quantize.ort_float import convert_float
from deepopt_core.passes.quantize.ort_static import quantize_static
from deepopt_core.passes.quantize.ort_weight_only import quantize_weight_only

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1300], y[:1300], x[1300:], y[1300:]

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return {
        "path": path,
        "calib": [{"pixels": x_train[i : i + 32]} for i in range(0, 128, 32)],
        "eval": [{"pixels": x_train[-200:]}],
        "eval_labels": y_train[-200:],
        "x_test": x_test,
        "y_test": y_test,
    }


def _accuracy(path: Path | str, x: np.ndarray, y: np.ndarray) -> float:
    out = run_outputs(path, [{"pixels": x}])[0][0]
    return float((out.argmax(-1) == y).mean())


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation("eager")

    class Wrap(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    ids = torch.ones(2, 8, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrap(model),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )

    rng = np.random.default_rng(0)

    def feeds(count: int, batch: int) -> list[dict[str, np.ndarray]]:
        out = []
        for _ in range(count):
            seq = int(rng.integers(6, 24))  # varied lengths: calibration must cope with them
            mask = np.ones((batch, seq), np.int64)
            mask[0, seq - 2 :] = 0
            out.append(
                {
                    "input_ids": rng.integers(1, 1000, (batch, seq)).astype(np.int64),
                    "attention_mask": mask,
                    "token_type_ids": np.zeros((batch, seq), np.int64),
                }
            )
        return out

    test = feeds(6, 8)
    return {
        "path": path,
        "calib": feeds(8, 4),
        "eval": feeds(3, 8),
        "test": test,
        "reference": run_outputs(path, test),
    }


def _fidelity(bert: dict[str, object], path: Path) -> float:
    """Mean cosine of mean-pooled (masked) token embeddings against fp32, as the benchmark measures it."""

    def pooled(outputs: Outputs) -> np.ndarray:
        rows = []
        for out, feed in zip(outputs, bert["test"], strict=True):  # type: ignore[call-overload]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            rows.append((out[0] * mask).sum(1) / mask.sum(1))
        return np.concatenate(rows)

    a, b = pooled(bert["reference"]), pooled(run_outputs(path, bert["test"]))  # type: ignore[arg-type]
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# ---------------------------------------------------------------------------------------------------------------
# dynamic
# ---------------------------------------------------------------------------------------------------------------


def test_dynamic_bert_fuses_then_quantizes_with_high_fidelity(bert: dict, tmp_path: Path) -> None:
    out = tmp_path / "dyn.onnx"
    d = quantize_dynamic(bert["path"], out, fusion="full")
    assert d["preprocess"]["fused_ops"].get("Attention") == 2  # fusion found heads/hidden size itself
    assert d["preprocess"]["pre_process"] == "ok"
    ops = _ops(out)
    assert ops["QAttention"] == 2 and ops["MatMulInteger"] >= 6, ops
    assert {q["op_type"] for q in d["quantized"]} >= {"Attention", "MatMul"}
    assert d["verification"]["runs_on_cpu"] is True
    assert d["settings"]["per_channel"] is True
    assert d["size_bytes"]["ratio"] < 0.4
    assert _fidelity(bert, out) >= 0.99
    assert not list(tmp_path.glob("*.data"))  # no external-data leftovers


def test_dynamic_exclude_by_op_type_name_and_glob(bert: dict, tmp_path: Path) -> None:
    first = quantize_dynamic(bert["path"], tmp_path / "a.onnx", fusion="full")
    matmul = next(q["node"] for q in first["quantized"] if q["op_type"] == "MatMul")
    out = tmp_path / "b.onnx"
    d = quantize_dynamic(
        bert["path"], out, fusion="full", exclude=["Attention", matmul, "*output/dense*", "no_such_node"]
    )
    kept = {k["node"]: k for k in d["kept_float"]}
    assert matmul in kept and kept[matmul]["reason"] == "excluded by the user"
    assert sum(1 for k in kept.values() if k["op_type"] == "Attention") == 2
    assert any("output/dense" in name for name in kept)
    assert d["exclude_unmatched"] == ["no_such_node"]
    assert _ops(out)["QAttention"] == 0 and _ops(out)["Attention"] == 2
    assert _fidelity(bert, out) >= 0.99


def test_dynamic_default_is_unfused_per_channel(bert: dict, tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    d = quantize_dynamic(bert["path"], out)
    assert d["settings"]["fusion"] == "none" and d["preprocess"]["pre_process"] == "ok"
    assert sum(q["op_type"] == "MatMul" for q in d["quantized"]) == 12  # 4 attention x activation stay float
    assert sum("activation x activation" in k["reason"] or "no constant" in k["reason"] for k in d["kept_float"]) >= 4
    assert _fidelity(bert, out) >= 0.99


def test_dynamic_accuracy_guard_rebuilds_without_the_most_sensitive_node(bert: dict, tmp_path: Path) -> None:
    out = tmp_path / "g.onnx"
    d = quantize_dynamic(bert["path"], out, eval_feeds=bert["eval"], max_drop=0.0, max_fallback=1)
    guard = d["guard"]
    assert guard["fallback_nodes"] == list(guard["sensitivity"])[:1]
    kept = {k["node"]: k["reason"] for k in d["kept_float"]}
    assert kept[guard["fallback_nodes"][0]].startswith("accuracy guard")
    assert guard["within_max_drop"] is False and "max_fallback=1" in guard["note"]  # max_drop 0 is unreachable
    assert _fidelity(bert, out) >= 0.99


# ---------------------------------------------------------------------------------------------------------------
# static
# ---------------------------------------------------------------------------------------------------------------


def test_static_digits_cnn_keeps_accuracy(digits: dict, tmp_path: Path) -> None:
    out = tmp_path / "static.onnx"
    d = quantize_static(digits["path"], out, digits["calib"], num_samples=96)
    fp32 = _accuracy(digits["path"], digits["x_test"], digits["y_test"])
    int8 = _accuracy(out, digits["x_test"], digits["y_test"])
    assert fp32 > 0.9
    assert int8 >= fp32 - 0.01, (fp32, int8)
    assert d["settings"]["num_samples"] == 96
    assert {q["op_type"] for q in d["quantized"]} >= {"Conv", "Gemm"}
    assert d["verification"]["runs_on_cpu"] is True
    assert d["size_bytes"]["ratio"] < 0.4


@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax"])
def test_static_bert_calibration_methods(bert: dict, tmp_path: Path, method: str) -> None:
    out = tmp_path / f"{method}.onnx"
    d = quantize_static(bert["path"], out, bert["calib"], calibration_method=method)
    kept = {k["node"]: k["reason"] for k in d["kept_float"]}
    # attention's activation x activation MatMuls stay float; all 12 weight MatMuls are int8 (u8s8 kernels)
    assert sum("activation x activation" in r for r in kept.values()) == 4
    assert len(d["quantized"]) == 12
    assert _ops(out)["MatMulIntegerToFloat"] == 12
    assert d["embeddings_int8"] and d["embeddings_int8"][0]["rows"] == 1000
    assert d["verification"]["runs_on_cpu"] is True
    assert _fidelity(bert, out) >= 0.98


def test_static_residual_stream_stays_float(bert: dict, tmp_path: Path) -> None:
    """Only the quantized MatMuls read dequantized activations: LayerNorm/residual inputs stay float."""
    out = tmp_path / "s.onnx"
    quantize_static(bert["path"], out, bert["calib"], lower_matmuls=False)
    model = onnx.load(str(out))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("SkipLayerNormalization", "LayerNormalization", "Add", "Shape"):
            for name in node.input:
                assert name not in producers or producers[name].op_type != "DequantizeLinear", node.name


def test_accuracy_guard_returns_most_sensitive_nodes_to_float(bert: dict, tmp_path: Path) -> None:
    full = quantize_static(bert["path"], tmp_path / "full.onnx", bert["calib"])
    out = tmp_path / "guard.onnx"
    d = quantize_static(bert["path"], out, bert["calib"], eval_feeds=bert["eval"], max_drop=0.0, max_fallback=3)
    guard = d["guard"]
    ranked = list(guard["sensitivity"])
    assert len(ranked) == len(full["quantized"])
    assert 1 <= len(guard["fallback_nodes"]) <= 3
    assert guard["fallback_nodes"] == ranked[: len(guard["fallback_nodes"])]  # most sensitive first
    kept = {k["node"]: k["reason"] for k in d["kept_float"]}
    assert all(kept[n].startswith("accuracy guard") for n in guard["fallback_nodes"])
    assert len(d["quantized"]) == len(full["quantized"]) - len(guard["fallback_nodes"])
    assert _fidelity(bert, out) >= _fidelity(bert, tmp_path / "full.onnx") - 1e-4


def test_accuracy_guard_with_accuracy_metric_on_digits(digits: dict, tmp_path: Path) -> None:
    out = tmp_path / "g.onnx"
    d = quantize_static(
        digits["path"],
        out,
        digits["calib"],
        eval_feeds=digits["eval"],
        metric=accuracy_metric(digits["eval_labels"]),
        max_drop=0.005,
    )
    assert d["guard"]["within_max_drop"] is True
    assert d["guard"]["metric_float"] - d["guard"]["metric_quantized"] <= 0.005
    assert (
        _accuracy(out, digits["x_test"], digits["y_test"])
        >= _accuracy(digits["path"], digits["x_test"], digits["y_test"]) - 0.01
    )


# ---------------------------------------------------------------------------------------------------------------
# weight-only
# ---------------------------------------------------------------------------------------------------------------


def test_weight_only_int8_is_near_lossless(bert: dict, tmp_path: Path) -> None:
    out = tmp_path / "w8.onnx"
    d = quantize_weight_only(bert["path"], out, bits=8, block_size=32)
    assert _ops(out)["MatMulNBits"] == 12
    assert d["settings"]["algorithm"] == "rtn"
    assert d["verification"]["runs_on_cpu"] is True
    assert _fidelity(bert, out) >= 0.999


@pytest.mark.parametrize("algorithm", ["awq_clip", "rtn", "hqq"])
def test_weight_only_int4(bert: dict, tmp_path: Path, algorithm: str) -> None:
    out = tmp_path / f"w4_{algorithm}.onnx"
    d = quantize_weight_only(
        bert["path"], out, bits=4, block_size=32, algorithm=algorithm, calibration=bert["calib"]
    )
    assert _ops(out)["MatMulNBits"] == 12
    assert d["verification"]["runs_on_cpu"] is True
    assert _fidelity(bert, out) >= 0.97
    if algorithm == "awq_clip":
        assert d["settings"]["importance_from_calibration"] is True
        assert d["matmul_weight_bytes"]["ratio"] <= 0.16


# ---------------------------------------------------------------------------------------------------------------
# fp16 / bf16
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_float16_and_bfloat16_keep_io_float32(bert: dict, tmp_path: Path, dtype: str) -> None:
    out = tmp_path / f"{dtype}.onnx"
    d = convert_float(bert["path"], out, dtype=dtype, eval_feeds=bert["eval"])
    model = onnx.load(str(out))
    assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in model.graph.input)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert d["verification"]["runs_on_cpu"] is True and d["verification"]["finite_outputs"] is True
    assert d["size_bytes"]["ratio"] <= 0.56  # graph overhead of a tiny model; MiniLM: 0.50 (benchmark)
    assert _fidelity(bert, out) >= 0.999
    if dtype == "bf16":  # ONNX Runtime's CPU provider has no bfloat16 MatMul: reported, and run in float32
        assert "MatMul" in d["no_cpu_kernel"]


def test_bf16_cnn_reports_ops_without_bf16_support(digits: dict, tmp_path: Path) -> None:
    out = tmp_path / "bf16.onnx"
    d = convert_float(digits["path"], out, dtype="bf16")
    assert d["verification"]["runs_on_cpu"] is True
    assert {"Conv", "Gemm"} <= {k["op_type"] for k in d["kept_float32"]}
    fp32 = _accuracy(digits["path"], digits["x_test"], digits["y_test"])
    assert _accuracy(out, digits["x_test"], digits["y_test"]) >= fp32 - 0.01


# ---------------------------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------------------------


def test_verify_reports_ops_that_need_another_provider() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 4])
    node = helper.make_node("Trilu", ["x"], ["y"], name="gpu_only")  # no bfloat16 Trilu kernel on CPU
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    result = verify(model)
    assert result["runs_on_cpu"] is False
    assert result["ops_without_cpu_kernel"] == [{"op_type": "Trilu", "opset": 14, "node": "gpu_only"}]
    assert "GPU" in result["note"]
