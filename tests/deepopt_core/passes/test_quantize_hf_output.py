"""Weight-only int4/int8 quantization of Hugging Face uploads, saved as `hf` output: a compressed-tensors folder
that plain transformers loads (in a fresh interpreter that cannot import this project), computing what the job's
quantized model computes. Models: the tiny BERT classifier and a small Llama causal LM, both built from configs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepopt_core.errors import InvalidPipeline
from deepopt_core.pipeline import optimize

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(600)]
BENCH = {"batch_sizes": [1], "runs": 1, "warmup": 0, "threads": 1}
IDS = ((np.arange(24).reshape(2, 12) * 13 + 5) % 60).tolist()  # within both vocabularies

_LOAD_WITH_TRANSFORMERS = """
import json, sys, torch, transformers
folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
config = json.load(open(folder + "/config.json"))
model = getattr(transformers, config["architectures"][0]).from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
print(json.dumps({"logits": logits.tolist(), "class": type(model).__name__}))
"""


def build_llama(outdir: Path) -> Path:
    """A randomly initialised 2-layer Llama (hidden 64, GQA, tied embeddings) saved and zipped, no tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    folder = outdir / "tiny-llama"
    LlamaForCausalLM(config).eval().save_pretrained(str(folder))
    path = outdir / "tiny_llama.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"tiny-llama/{file.name}")
    return path


@pytest.fixture(scope="module")
def tiny_llama_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("llama"))


def expected_logits(source_zip: Path, bits: int, block: int, exclude: set[str], tmp: Path) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """(float logits, logits of the source with the pass's block-wise weights) on IDS, computed here."""
    from deepopt_core.formats.hf import load_hf
    from deepopt_core.passes.quantize.torch_modes import _make_layer

    tmp.mkdir(parents=True, exist_ok=True)
    wrapper, _ = load_hf(source_zip, tmp)
    model = wrapper.hf_model
    ids = torch.tensor(IDS)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
        for name, sub in list(model.named_modules()):
            if type(sub) is nn.Linear and name not in exclude:
                parent, _, leaf = name.rpartition(".")
                layer = _make_layer(sub.weight, sub.bias, bits, block, clip_search=True)
                setattr(model.get_submodule(parent) if parent else model, leaf, layer)
        quantized = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    return reference, quantized


def load_artifact(archive: Path, tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    (folder,) = [p for p in tmp.iterdir() if (p / "config.json").is_file()]
    script = tmp / "load.py"
    script.write_text(_LOAD_WITH_TRANSFORMERS)
    done = subprocess.run([sys.executable, str(script), str(folder), json.dumps(IDS)], cwd=tmp, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                       "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["config"] = json.loads((folder / "config.json").read_text())
    out["weights_bytes"] = (folder / "model.safetensors").stat().st_size
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


CASES = {  # name: (model fixture, weight dtype, block size, exclude, min cosine to float, max weight-file ratio)
    "bert_int4": ("tiny_bert_zip", "int4", 32, ["classifier"], 0.97, 0.45),
    "bert_int8": ("tiny_bert_zip", "int8", 32, [], 0.999, 0.55),
    "llama_int4": ("tiny_llama_zip", "int4", 64, [], 0.97, 0.55),
    "llama_int8": ("tiny_llama_zip", "int8", 32, [], 0.999, 0.70),
}


@pytest.mark.parametrize("case", list(CASES))
def test_weight_only_hf_output_loads_with_plain_transformers(case, request, tmp_path):
    fixture, dtype, block, exclude, min_cosine, max_ratio = CASES[case]
    source = request.getfixturevalue(fixture)
    spec = {"type": "quantize", "mode": "weight_only", "weight_dtype": dtype, "block_size": block,
            "exclude": exclude}
    result = optimize(source, [spec], None, ["hf"], workdir=tmp_path / "job", benchmark=BENCH)
    (artifact,) = [a for a in result.artifacts if a.kind == "model"]
    assert artifact.format == "hf"
    loaded = load_artifact(Path(artifact.path), tmp_path / "out")

    bits = 4 if dtype == "int4" else 8
    qc = loaded["config"]["quantization_config"]
    assert (qc["quant_method"], qc["format"], qc["quantization_status"]) == (
        "compressed-tensors", "pack-quantized", "compressed")
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["group_size"], weights["symmetric"]) == (
        bits, "group", block, True)
    assert qc["ignore"] == exclude
    if fixture == "tiny_llama_zip":  # the quantized head keeps its own weight
        assert loaded["config"]["tie_word_embeddings"] is False

    reference, quantized = expected_logits(source, bits, block, set(exclude), tmp_path / "src")
    got = np.asarray(loaded["logits"], dtype=np.float32)
    # The folder holds the pass's own integers and scales: transformers computes the job's model to float32
    # rounding (0.0 measured), far below the quantization error itself.
    scale = max(1.0, float(np.abs(quantized).max()))
    assert np.abs(got - quantized).max() <= 1e-5 * scale
    assert np.abs(got - reference).max() > 10 * np.abs(got - quantized).max()  # it is quantized, not the float
    assert cosine(got, reference) >= min_cosine
    with zipfile.ZipFile(source) as zf:
        float_bytes = next(i.file_size for i in zf.infolist() if i.filename.endswith("model.safetensors"))
    assert loaded["weights_bytes"] <= max_ratio * float_bytes

    original, bench = result.benchmarks[0], result.benchmarks[1]
    assert bench.size_bytes < original.size_bytes
    done = next(d for d in result.decisions if d["type"] == "quantize")
    assert done["settings"]["bits"] == bits


def test_a_block_larger_than_a_layer_is_written_as_whole_groups_of_the_same_scales(tiny_bert_zip, tmp_path):
    # Blocks of 128 on the tiny BERT, whose layers are all narrower: the pass pads each row's one block, and the
    # folder writes groups of gcd(in_features, 128) with each block's scale repeated, so transformers computes the
    # job's model (ConvNeXt's 16-feature layers failed the save under block 32, a matrix cell).
    spec = {"type": "quantize", "mode": "weight_only", "weight_dtype": "int4", "block_size": 128}
    result = optimize(tiny_bert_zip, [spec], None, ["hf"], workdir=tmp_path / "job", benchmark=BENCH)
    (artifact,) = [a for a in result.artifacts if a.kind == "model"]
    loaded = load_artifact(Path(artifact.path), tmp_path / "out")
    groups = loaded["config"]["quantization_config"]["config_groups"]
    assert {g["weights"]["group_size"] for g in groups.values()} < {1, 2, 4, 8, 16, 32, 64}
    reference, quantized = expected_logits(tiny_bert_zip, 4, 128, set(), tmp_path / "src")
    got = np.asarray(loaded["logits"], dtype=np.float32)
    assert np.abs(got - quantized).max() <= 1e-5 * max(1.0, float(np.abs(quantized).max()))
    assert np.abs(got - reference).max() > 10 * np.abs(got - quantized).max()


def test_dynamic_int8_hf_output_is_still_refused_at_submit(tiny_bert_zip, tmp_path):
    with pytest.raises(InvalidPipeline, match="cannot be saved as safetensors"):
        optimize(tiny_bert_zip, [{"type": "quantize", "mode": "dynamic"}], None, ["hf"], workdir=tmp_path)


@pytest.mark.xfail(strict=True, reason="known defect (issue 15): with two group sizes (16 and 32) in one folder, "
                   "compressed-tensors' decompress in transformers applies the wrong group count to ConvNeXt's "
                   "pwconv2 layers ('size of tensor a (8) must match b (2)'); the check on pixels itself works")
def test_an_image_model_is_checked_on_pixels(tmp_path):
    # The check that transformers loads the folder fed token ids to every model: ConvNeXt's weight-only hf output
    # failed after acceptance with "You have to specify pixel_values" (a matrix cell). Its 16-feature layers also
    # take block 32 as whole groups (see above).
    import shutil

    from tests.fixtures.hf_architectures import save_architecture

    folder = save_architecture("convnext", tmp_path / "convnext", "ConvNextForImageClassification")
    source = Path(shutil.make_archive(str(tmp_path / "convnext"), "zip", folder.parent, folder.name))
    spec = {"type": "quantize", "mode": "weight_only", "weight_dtype": "int8", "block_size": 32}
    result = optimize(source, [spec], None, ["hf"], workdir=tmp_path / "job", benchmark=BENCH)
    (artifact,) = [a for a in result.artifacts if a.kind == "model"]
    assert artifact.format == "hf"
    check = next(d for d in result.decisions if d["type"] == "quantize").get("hf_check") or {}
    assert not check or check.get("max_abs_diff", 0.0) <= check.get("tolerance", 1.0)
