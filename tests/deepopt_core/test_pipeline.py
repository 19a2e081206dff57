"""`optimize` end to end: plan, passes, saved and verified outputs, benchmarks and decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepopt_core.errors import InvalidDataset, InvalidPipeline, PassFailed
from deepopt_core.formats import detect_format
from deepopt_core.pipeline import optimize
from tests.deepopt_core.conftest import FAST_BENCH

pytestmark = pytest.mark.filterwarnings("ignore")
PRUNE_QUANT = [{"type": "prune", "sparsity": 0.5}, {"type": "quantize"}]


def test_onnx_prune_quantize_benchmark(digits, tmp_path):
    events: list[tuple[float, str]] = []
    result = optimize(digits["onnx"], PRUNE_QUANT, {"eval": digits["eval"], "calibration": digits["calibration"]},
                      workdir=tmp_path / "out", benchmark=FAST_BENCH, on_progress=lambda f, s: events.append((f, s)))
    artifact, svg, png, manifest = result.artifacts
    assert artifact.format == "onnx" and artifact.filename == "digits_mlp-optimized.onnx"
    assert (manifest.kind, manifest.format, manifest.filename) == ("report", "json", "digits_mlp-manifest.json")
    assert [(p.kind, p.format) for p in (svg, png)] == [("plot", "svg"), ("plot", "png")]
    assert "<svg" in Path(svg.path).read_text() and Path(png.path).read_bytes()[:4] == b"\x89PNG"
    assert Path(artifact.path).is_file() and detect_format(artifact.path) == "onnx"
    original, optimized = result.benchmarks
    assert original.artifact_index is None and optimized.artifact_index == 0
    assert original.sparsity == 0.0 and optimized.sparsity >= 0.5
    assert optimized.size_bytes <= 0.35 * original.size_bytes
    assert original.metrics["accuracy"] >= 0.95
    assert optimized.metrics["accuracy"] >= original.metrics["accuracy"] - 0.02
    assert optimized.metrics["fidelity_cosine"] > 0.99 and optimized.metrics["top1_agreement"] > 0.97
    assert set(optimized.metrics["latency_ms_p50_by_batch"]) == {"1", "16"}
    assert optimized.latency_ms_p50 > 0 and optimized.throughput_per_s > 0 and optimized.peak_memory_bytes >= 0
    assert optimized.num_parameters == original.num_parameters == 17226
    assert [d["type"] for d in result.decisions] == ["prune", "quantize"]
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"prune", "quantize", "benchmark"} <= {s for _, s in events}
    assert not (tmp_path / "out" / ".work").exists()


def test_pareto_front():
    from deepopt_core.evaluate.plots import pareto_front

    # (cost, quality): the cheapest, the best, and one that is both cheaper and better than a fourth.
    points = [(1.0, 0.90), (5.0, 0.99), (2.0, 0.95), (3.0, 0.94)]
    assert pareto_front(points) == [0, 1, 2]


def test_torchscript_source_to_torchscript_and_onnx(digits, tmp_path):
    result = optimize(digits["torchscript"], PRUNE_QUANT, {"eval": digits["eval"]}, ["torchscript", "onnx"],
                      workdir=tmp_path, benchmark=FAST_BENCH)
    models = [a for a in result.artifacts if a.kind == "model"]
    assert [a.format for a in models] == ["torchscript", "onnx"]
    assert [detect_format(a.path) for a in models] == ["torchscript", "onnx"]
    assert [(d["type"], d["track"], d["representation"]) for d in result.decisions] == [
        ("prune", "torch", "torch"), ("quantize", "torch", "torch"),
        ("export", "onnx", "torch"), ("prune", "onnx", "onnx"), ("quantize", "onnx", "onnx"),
    ]  # fmt: skip
    original = result.benchmarks[0]
    for bench in result.benchmarks[1:]:
        assert bench.metrics["accuracy"] >= original.metrics["accuracy"] - 0.02
        assert bench.size_bytes <= 0.35 * original.size_bytes
        assert bench.sparsity >= 0.5


def test_hugging_face_text_eval_and_hf_output(tiny_bert_zip, text_jsonl, tmp_path):
    result = optimize(tiny_bert_zip, [{"type": "prune", "sparsity": 0.3}], {"eval": text_jsonl}, ["hf", "onnx"],
                      workdir=tmp_path, benchmark={"batch_sizes": [2], "runs": 2, "warmup": 1, "threads": 1})
    assert [a.format for a in result.artifacts] == ["hf", "onnx", "svg", "png", "json"]
    assert detect_format(result.artifacts[0].path) == "hf"
    for bench in result.benchmarks:
        assert bench.metrics["inputs"] == "eval" and bench.metrics["rows"] == 12
    assert result.benchmarks[1].sparsity == pytest.approx(0.3, abs=0.01)
    hf_out, onnx_out = result.benchmarks[1].metrics, result.benchmarks[2].metrics
    assert onnx_out["fidelity_cosine"] == pytest.approx(hf_out["fidelity_cosine"], abs=1e-4)  # same pruned weights


def test_synthetic_inputs_without_datasets(digits, tmp_path):
    result = optimize(digits["torch_export"], [{"type": "prune", "sparsity": 0.25}], outputs=["torch_export"],
                      workdir=tmp_path, benchmark={"runs": 2, "warmup": 0, "threads": 1})
    assert result.benchmarks[1].metrics["inputs"] == "synthetic"
    assert "accuracy" not in result.benchmarks[1].metrics
    assert result.benchmarks[1].sparsity == pytest.approx(0.25, abs=1e-3)


def test_bad_requests(digits, tmp_path):
    with pytest.raises(InvalidPipeline, match="export converts PyTorch"):
        optimize(digits["onnx"], [{"type": "export"}], workdir=tmp_path)
    with pytest.raises(InvalidPipeline, match="unknown pass"):
        optimize(digits["onnx"], [{"type": "no-such-pass"}], workdir=tmp_path)
    with pytest.raises(InvalidPipeline, match="sparsity"):
        optimize(digits["onnx"], [{"type": "prune", "sparsity": 1.5}], workdir=tmp_path)
    with pytest.raises(InvalidDataset, match="no array named 'input'"):
        optimize(digits["onnx"], PRUNE_QUANT, {"eval": str(_npz(tmp_path))}, workdir=tmp_path)


def _npz(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "wrong.npz"
    np.savez(path, pixels=np.zeros((3, 64), np.float32))
    return path


def test_output_that_does_not_run_fails_the_job(digits, tmp_path, monkeypatch):
    import deepopt_core.pipeline as pipeline

    def broken_save(handle, fmt, path, sample):
        path.write_bytes(b"\x08\x07" + b"\x00" * 32)

    monkeypatch.setattr(pipeline, "_save", broken_save)
    with pytest.raises(PassFailed, match="does not load and run"):
        optimize(digits["onnx"], PRUNE_QUANT, workdir=tmp_path, benchmark=FAST_BENCH)


def test_model_with_a_fixed_batch_size(digits, tmp_path):
    import onnx

    model = onnx.load(str(digits["onnx"]))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    result = optimize(path, PRUNE_QUANT, {"eval": digits["eval"]}, workdir=tmp_path / "out", benchmark=FAST_BENCH)
    assert all(b.metrics["rows"] == 448 for b in result.benchmarks)  # 450 rows, trimmed to a multiple of 4
    assert all(set(b.metrics["latency_ms_p50_by_batch"]) == {"4"} for b in result.benchmarks)
    assert any("fixed batch size of 4" in w for w in result.warnings)
    assert result.benchmarks[1].metrics["top1_agreement"] > 0.97
