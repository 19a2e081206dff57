"""Every `quantize` mode through `deepopt_core.optimize` on the digits MLP (ONNX, TorchScript and .pt2 uploads)
and on the tiny BERT: accuracy and fidelity against the fp32 original, file sizes, what the decisions say, and
that the PyTorch outputs load with plain torch, without this project importable."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from deepopt_core.pipeline import optimize
from deepopt_core.result import Result

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(300)]
BENCH = {"batch_sizes": [1], "runs": 2, "warmup": 0, "threads": 1}


def run(source: Path, passes: list[dict[str, Any]], data: dict[str, Path], outputs: list[str] | None,
        workdir: Path) -> Result:
    return optimize(source, passes, data, outputs, workdir=workdir, benchmark=BENCH)


def models(result: Result) -> dict[str, tuple[Path, Any]]:
    """Output format -> (file, its benchmark); the original's benchmark under "original"."""
    out: dict[str, tuple[Path, Any]] = {"original": (Path(), result.benchmarks[0])}
    for bench in result.benchmarks[1:]:
        artifact = result.artifacts[bench.artifact_index]
        out[artifact.format] = (Path(artifact.path), bench)
    return out


def held_out(digits: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(digits["eval"])
    return data["input"], data["labels"]


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(1) == y).mean())


def decision(result: Result, track: str) -> dict[str, Any]:
    return next(d for d in result.decisions if d["type"] == "quantize" and d["track"] == track)


@pytest.fixture(scope="module")
def data(digits: dict[str, Path]) -> dict[str, Path]:
    return {"eval": digits["eval"], "calibration": digits["calibration"]}


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "max_size", "min_fidelity", "ops"), [
    ({"mode": "dynamic"}, 0.35, 0.9995, {"MatMulInteger": 3}),
    ({"mode": "static", "calibration": "minmax"}, 0.37, 0.997, {"QuantizeLinear": 4}),
    ({"mode": "static", "calibration": "entropy", "per_channel": False, "num_samples": 96}, 0.37, 0.998, {}),
    ({"mode": "weight_only", "weight_dtype": "int4"}, 0.22, 0.998, {"MatMulNBits": 3}),
    ({"mode": "weight_only", "weight_dtype": "int8", "block_size": 64}, 0.33, 0.99995, {"MatMulNBits": 3}),
    ({"mode": "fp16"}, 0.55, 0.99999, {}),
    ({"mode": "bf16"}, 0.55, 0.9999, {}),
])  # fmt: skip
def test_every_mode_on_onnx(digits, data, tmp_path, spec, max_size, min_fidelity, ops):
    result = run(digits["onnx"], [{"type": "quantize", **spec}], data, None, tmp_path)
    (path, bench), original = models(result)["onnx"], models(result)["original"][1]
    assert bench.size_bytes <= max_size * original.size_bytes
    assert bench.metrics["fidelity_cosine"] >= min_fidelity
    assert bench.metrics["accuracy"] >= original.metrics["accuracy"] - 0.01
    x, y = held_out(digits)
    assert onnx_accuracy(path, x, y) >= onnx_accuracy(digits["onnx"], x, y) - 0.01  # the file itself, in ORT
    d = decision(result, "onnx")
    assert d["mode"] == spec["mode"] and d["verification"]["runs_on_cpu"] is True
    assert all(d["quantized_ops"].get(op, 0) >= count for op, count in ops.items()), d["quantized_ops"]
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types default
    if spec["mode"] == "static":
        assert d["settings"]["calibration_method"] == spec["calibration"] and d["preprocess"]["pre_process"] == "ok"
    if spec["mode"] == "weight_only":
        assert d["settings"]["bits"] == int(spec["weight_dtype"][-1]) and d["settings"]["gemm_rewritten_as_matmul"] == 3
    if spec["mode"] == "bf16":  # ONNX Runtime's CPU provider lacks bf16 Gemm: said, and computed in float32
        assert "Gemm" in d["no_cpu_kernel"] and any("no bf16 kernel for" in w for w in result.warnings)


def test_fp16_without_keep_io_types_takes_float16_inputs(digits, tmp_path):
    result = run(digits["onnx"], [{"type": "quantize", "mode": "fp16", "keep_io_types": False}], {}, None, tmp_path)
    path, bench = models(result)["onnx"]
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert bench.metrics["fidelity_cosine"] >= 0.9999


def test_exclude_by_layer_op_type_and_node_name(digits, data, tmp_path):
    passes = [{"type": "quantize", "mode": "static", "exclude": ["fc3", "Relu", "nothing_like_this"]}]
    result = run(digits["onnx"], passes, data, None, tmp_path)
    d = decision(result, "onnx")
    kept = {k["node"]: k["reason"] for k in d["kept_float"]}
    assert kept["/fc3/Gemm"] == "excluded by the user" and d["exclude_aliases"] == {"fc3": "/fc3/Gemm"}
    assert {n for n, r in kept.items() if r == "excluded by the user"} == {"/fc3/Gemm", "/Relu", "/Relu_1"}
    assert {q["node"] for q in d["quantized"]} == {"/fc1/Gemm", "/fc2/Gemm"}
    assert any("nothing_like_this" in w for w in result.warnings)
    weights = {i.name: i.data_type for i in onnx.load(str(models(result)["onnx"][0])).graph.initializer}
    assert weights["fc3.weight"] == onnx.TensorProto.FLOAT and "fc1.weight_quantized" in weights


def test_accuracy_guard_leaves_the_most_sensitive_nodes_in_float_and_says_so(digits, data, tmp_path):
    guard = {"max_drop": 0.00002, "metric": "fidelity"}
    result = run(digits["onnx"], [{"type": "quantize", "mode": "static", "accuracy_guard": guard}], data, None,
                 tmp_path / "guarded")
    d = decision(result, "onnx")
    report = d["guard"]
    ranked = list(report["sensitivity"])
    assert report["fallback_nodes"] and report["fallback_nodes"] == ranked[: len(report["fallback_nodes"])]
    assert report["within_max_drop"] is True and report["drop"] <= guard["max_drop"]
    assert report["metric_float"] - report["metric_quantized"] == pytest.approx(report["drop"])
    kept = {k["node"]: k["reason"] for k in d["kept_float"]}
    assert all(kept[node].startswith("accuracy guard: sensitivity") for node in report["fallback_nodes"])
    assert any("accuracy guard left" in w and report["fallback_nodes"][0] in w for w in result.warnings)
    assert report["sensitivity"][report["fallback_nodes"][0]] > report["drop"]  # quantized, it alone was too much
    bench = models(result)["onnx"][1]
    assert bench.metrics["fidelity_cosine"] >= 1 - guard["max_drop"] - 1e-6
    (note,) = bench.metrics["quantization"]  # the artifact's benchmark says which nodes stayed float, and why
    assert note["mode"] == "static" and note["guard"]["fallback_nodes"] == report["fallback_nodes"]
    assert {f["name"] for f in note["float"] if f["reason"].startswith("accuracy guard")} == set(
        report["fallback_nodes"])

    # The accuracy metric (labels) with a budget the quantized model meets: nothing goes back to float.
    result = run(digits["onnx"], [{"type": "quantize", "mode": "dynamic", "accuracy_guard": {"max_drop": 0.01}}],
                 data, None, tmp_path / "accuracy")
    report = decision(result, "onnx")["guard"]
    assert report["metric_float"] > 0.95 and report["fallback_nodes"] == [] and report["within_max_drop"]


def test_guard_capped_by_max_fallback_reports_that_it_missed(digits, data, tmp_path):
    spec = {"type": "quantize", "mode": "weight_only", "accuracy_guard": {"max_drop": 0.0, "metric": "fidelity",
                                                                           "max_fallback": 1}}
    result = run(digits["onnx"], [spec], data, None, tmp_path)
    d = decision(result, "onnx")
    assert len(d["guard"]["fallback_nodes"]) == 1 and d["guard"]["within_max_drop"] is False
    assert d["quantized_ops"] == {"MatMulNBits": 2}
    assert any("could not bring the drop within max_drop" in w for w in result.warnings)


def test_prune_then_dynamic_keeps_the_headline_numbers(digits, data, tmp_path):
    passes = [{"type": "prune", "sparsity": 0.5}, {"type": "quantize", "mode": "dynamic", "weight_dtype": "int8"}]
    result = run(digits["onnx"], passes, data, None, tmp_path)
    bench, original = models(result)["onnx"][1], models(result)["original"][1]
    assert bench.size_bytes <= 0.35 * original.size_bytes and bench.sparsity >= 0.45
    assert bench.metrics["accuracy"] >= original.metrics["accuracy"] - 0.02
    assert decision(result, "onnx")["quantized_ops"] == {"MatMulInteger": 3}


# ---------------------------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------------------------


_LOAD_WITHOUT_PROJECT = """
import json, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("deepopt_core", "examples", "tests", "app", "worker", "benchmarks"):
            raise ImportError("the project is not importable here: " + name)
sys.meta_path.insert(0, Refuse())
sys.path = [p for p in sys.path if p not in ("", ".")]
import numpy as np, torch
x = torch.from_numpy(np.load(sys.argv[1])["input"])
out = {}
for path in sys.argv[2:]:
    module = torch.jit.load(path) if path.endswith(".pt") else torch.export.load(path).module()
    with torch.no_grad():
        y = module(x)
    out[path] = [str(y.dtype), y.argmax(1).tolist()]
print(json.dumps(out))
"""


def load_without_project(eval_npz: Path, paths: list[Path], tmp_path: Path) -> dict[str, Any]:
    """Load and run the files with torch in a fresh interpreter that cannot import this project."""
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_PROJECT)
    done = subprocess.run([sys.executable, str(script), str(eval_npz), *map(str, paths)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def weights_bytes(pt2: Path) -> int:
    with zipfile.ZipFile(pt2) as archive:
        return sum(i.file_size for i in archive.infolist() if "/data/weights/weight_" in i.filename)


TORCH_CASES = {  # name: (upload, spec, outputs, max size ratio of the first output, min fidelity)
    "ts_int4": ("torchscript", {"mode": "weight_only", "weight_dtype": "int4"}, ["torchscript"], 0.25, 0.995),
    "ts_int8": ("torchscript", {"mode": "weight_only", "weight_dtype": "int8", "exclude": ["fc3"],
                                "algorithm": "rtn"}, ["torchscript"], 0.36, 0.99999),
    "ts_fp16": ("torchscript", {"mode": "fp16"}, ["torchscript"], 0.52, 0.99999),
    "ts_bf16": ("torchscript", {"mode": "bf16", "exclude": ["fc3"]}, ["torchscript"], 0.55, 0.9999),
    "pt2_int4": ("torch_export", {"mode": "weight_only", "weight_dtype": "int4"}, ["torch_export", "torchscript"],
                 1.0, 0.995),
    "pt2_fp16": ("torch_export", {"mode": "fp16", "exclude": ["fc3"]}, ["torch_export"], 1.0, 0.99999),
}


@pytest.fixture(scope="module")
def torch_results(digits, data, tmp_path_factory) -> dict[str, Result]:
    """Each case of TORCH_CASES run once; the tests below check them."""
    return {name: run(digits[source], [{"type": "quantize", **spec}], data, outputs, tmp_path_factory.mktemp(name))
            for name, (source, spec, outputs, _, _) in TORCH_CASES.items()}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_pytorch_upload_to_pytorch_outputs(torch_results, digits, name):
    source, spec, outputs, max_size, min_fidelity = TORCH_CASES[name]
    result = torch_results[name]
    out = models(result)
    original = out["original"][1]
    for fmt in outputs:
        bench = out[fmt][1]
        assert bench.metrics["fidelity_cosine"] >= min_fidelity
        assert bench.metrics["accuracy"] >= original.metrics["accuracy"] - 0.02
        assert bench.num_parameters == original.num_parameters == 17226  # 4-bit weights count as weights
    assert out[outputs[0]][1].size_bytes <= max_size * original.size_bytes
    d = decision(result, "torch")
    if spec["mode"] == "weight_only":
        assert set(d["quantized_layers"]) == {"fc1", "fc2", "fc3"} - set(spec.get("exclude", []))
        assert d["weight_bytes"]["ratio"] <= (0.16 if spec["weight_dtype"] == "int4" else 0.29)
        assert [k["layer"] for k in d["kept_float"]] == spec.get("exclude", [])
    else:
        assert [k["layer"] for k in d["kept_float32"]] == spec.get("exclude", [])
    if source == "torch_export":
        # The graph of a tiny MLP is a large part of a .pt2; the weights are what quantization shrinks.
        limit = 0.2 if spec["mode"] == "weight_only" else 0.55
        assert weights_bytes(out["torch_export"][0]) <= limit * weights_bytes(digits["torch_export"])
        assert out["torch_export"][1].size_bytes < original.size_bytes


def test_pytorch_outputs_load_with_plain_torch(torch_results, digits, tmp_path):
    """TorchScript and .pt2 outputs (int4 weights, bf16 with a float32 layer, fp16) load with torch.jit.load /
    torch.export.load in an interpreter that cannot import this project, return float32 (keep_io_types) and keep
    held-out accuracy."""
    paths = [models(torch_results[name])[fmt][0] for name, fmt in (
        ("ts_int4", "torchscript"), ("ts_bf16", "torchscript"), ("pt2_int4", "torch_export"),
        ("pt2_fp16", "torch_export"))]  # fmt: skip
    loaded = load_without_project(digits["eval"], paths, tmp_path)
    x, y = held_out(digits)
    baseline = onnx_accuracy(digits["onnx"], x, y)
    for path in paths:
        dtype, predictions = loaded[str(path)]
        assert dtype == "torch.float32", path
        assert (np.asarray(predictions) == y).mean() >= baseline - 0.02, path


def test_torchscript_upload_static_to_onnx(digits, data, tmp_path):
    """Static runs on ONNX only: a PyTorch upload asking for ONNX output is exported first, then quantized."""
    passes = [{"type": "prune", "sparsity": 0.3}, {"type": "quantize", "mode": "static"}]
    result = run(digits["torchscript"], passes, data, ["onnx"], tmp_path / "static")
    assert [(d["type"], d["representation"]) for d in result.decisions] == [
        ("export", "torch"), ("prune", "onnx"), ("quantize", "onnx")]
    (path, bench), original = models(result)["onnx"], models(result)["original"][1]
    assert bench.size_bytes <= 0.35 * original.size_bytes
    assert bench.metrics["accuracy"] >= original.metrics["accuracy"] - 0.02
    x, y = held_out(digits)
    assert onnx_accuracy(path, x, y) >= onnx_accuracy(digits["onnx"], x, y) - 0.02


def test_hugging_face_weight_only_and_fp16(tiny_bert_zip, text_jsonl, tmp_path):
    data = {"eval": text_jsonl, "calibration": text_jsonl}
    result = run(tiny_bert_zip, [{"type": "quantize", "mode": "weight_only", "weight_dtype": "int8",
                                  "block_size": 16, "exclude": ["classifier"]}], data, ["torchscript", "onnx"],
                 tmp_path / "wo")
    out = models(result)
    for fmt in ("torchscript", "onnx"):
        assert out[fmt][1].metrics["fidelity_cosine"] >= 0.999
    torch_decision, onnx_decision = decision(result, "torch"), decision(result, "onnx")
    assert len(torch_decision["quantized_layers"]) == 13 and "classifier" not in torch_decision["quantized_layers"]
    assert onnx_decision["quantized_ops"]["MatMulNBits"] == 13  # `classifier` names the ONNX node too
    assert onnx_decision["exclude_aliases"]["classifier"].endswith("classifier/Gemm")

    result = run(tiny_bert_zip, [{"type": "quantize", "mode": "fp16"}], data, ["hf"], tmp_path / "fp16")
    bench, original = models(result)["hf"][1], models(result)["original"][1]
    assert bench.metrics["fidelity_cosine"] >= 0.9999
    assert bench.size_bytes <= 0.6 * original.size_bytes  # safetensors in float16


def test_static_on_a_pytorch_output_is_refused_before_running(digits, data, tmp_path):
    from deepopt_core.errors import InvalidPipeline

    with pytest.raises(InvalidPipeline, match="static quantization runs on ONNX models"):
        run(digits["torchscript"], [{"type": "quantize", "mode": "static"}], data, ["torchscript"], tmp_path)
    with pytest.raises(InvalidPipeline, match="'hf' output needs a Hugging Face model upload"):
        run(digits["torchscript"], [{"type": "quantize", "mode": "weight_only"}], data, ["hf"], tmp_path)
