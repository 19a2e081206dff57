"""The plain `{"type": "quantize", "mode": "dynamic"}` call uses the measured best settings (per-channel weight
scales) and beats ONNX Runtime's stock `quantize_dynamic()` on all-MiniLM-L6-v2, the model that showed the gap
(benchmarks/results/quantization.md: 0.9925 against 0.9629 cosine fidelity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepopt_core.evaluate.metrics import cosine_fidelity
from deepopt_core.pipeline import optimize

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(600)]
BENCH = {"batch_sizes": [1], "runs": 1, "warmup": 0, "threads": 1}


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from benchmarks import common

    folder = tmp_path_factory.mktemp("minilm")
    tokenizer = common.load_tokenizer()
    feeds = common.sentence_feeds(tokenizer, common.load_sentences(64), batch_size=16)
    return {"path": common.export_minilm(folder / "minilm.onnx"), "feeds": feeds}


def _fidelity(path: Path, minilm: dict, reference: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    from benchmarks import common

    embeddings = common.embeddings(common.make_session(path, 1), minilm["feeds"])  # type: ignore[arg-type]
    return (cosine_fidelity(reference, embeddings) if reference is not None else 1.0), embeddings


def test_plain_dynamic_call_is_per_channel_and_beats_stock_on_minilm(minilm, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    result = optimize(minilm["path"], [{"type": "quantize", "mode": "dynamic"}], None, ["onnx"],
                      workdir=tmp_path / "job", benchmark=BENCH)
    decision = next(d for d in result.decisions if d["type"] == "quantize")
    assert decision["per_channel"] is True and decision["settings"]["per_channel"] is True
    stock = tmp_path / "stock.onnx"
    quantize_dynamic(str(minilm["path"]), str(stock))
    (artifact,) = [a for a in result.artifacts if a.kind == "model"]
    _, reference = _fidelity(minilm["path"], minilm)
    ours, _ = _fidelity(Path(artifact.path), minilm, reference)
    stock_fidelity, _ = _fidelity(stock, minilm, reference)
    # 64 sentences: ours 0.99, stock 0.96 (300 sentences in the benchmark: 0.9925 and 0.9629)
    assert ours >= 0.99 and ours >= stock_fidelity + 0.015, (ours, stock_fidelity)


def test_plain_dynamic_call_on_pytorch_is_per_channel(tiny_bert_zip, tmp_path):
    result = optimize(tiny_bert_zip, [{"type": "quantize", "mode": "dynamic"}], None, ["torchscript"],
                      workdir=tmp_path, benchmark=BENCH)
    decision = next(d for d in result.decisions if d["type"] == "quantize")
    assert decision["per_channel"] is True and decision["quantized_layers"]
