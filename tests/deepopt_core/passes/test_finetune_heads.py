"""`finetune` on the Hugging Face uploads that failed after acceptance in the conformance matrix: decoders (GPT-2,
Llama, Qwen2), whose sequence classification head needs a pad token and whose tokenizers have none, and ViT, which
needs an image classification head; GPT-2's transposed ``Conv1D`` layers under bottleneck adapters."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.pipeline import optimize
from tests.fixtures.hf_architectures import save_architecture

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(120),
              pytest.mark.usefixtures("one_torch_thread")]
BENCH = {"batch_sizes": [2], "runs": 2, "warmup": 1, "threads": 1}
TRAIN = {"type": "finetune", "max_steps": 2, "batch_size": 8, "validation_split": 0.0}
ROWS, SEQUENCE = 16, 12


def _text_rows(path: Path, seed: int) -> Path:
    """Token rows whose second half is padded (mask 0) in every other row, 4 classes: batches of unequal rows."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 60, size=(ROWS, SEQUENCE)).astype(np.int64)
    mask = np.ones((ROWS, SEQUENCE), np.int64)
    mask[1::2, SEQUENCE // 2:] = 0
    np.savez(path, input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 4)
    return path


def _unzip(artifact_path: str, into: Path) -> Path:
    zipfile.ZipFile(artifact_path).extractall(into)
    return next(p for p in into.iterdir() if p.is_dir())


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
def test_decoder_lora_pads_with_eos_and_keeps_it(name, tmp_path):
    """No pad token in the config (as the real GPT-2 and Llama): the head pads with the end-of-sequence token,
    trains on batches of 8 and the Hugging Face output loads with that pad token and its trained head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = save_architecture(name, tmp_path / name)
    train, evaluation = _text_rows(tmp_path / "train.npz", 1), _text_rows(tmp_path / "eval.npz", 2)
    result = optimize(folder, [{**TRAIN, "method": "lora", "r": 4}], {"train": train, "eval": evaluation},
                      ["hf", "onnx"], workdir=tmp_path / "out", benchmark=BENCH)
    assert {a.format for a in result.artifacts if a.kind == "model"} == {"hf", "onnx"}
    saved = _unzip(next(a.path for a in result.artifacts if a.format == "hf"), tmp_path / "hf")
    config = json.loads((saved / "config.json").read_text())
    assert config["pad_token_id"] == 2 and config["architectures"][0].endswith("ForSequenceClassification")
    model = AutoModelForSequenceClassification.from_pretrained(str(saved)).eval()
    feeds = np.load(evaluation)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(feeds["input_ids"]),
                       attention_mask=torch.from_numpy(feeds["attention_mask"])).logits
    assert logits.shape == (ROWS, 4)


@pytest.mark.parametrize("method", ["adapter_series", "adapter_parallel"])
def test_gpt2_adapters_on_transposed_conv1d(method, tmp_path):
    """GPT-2's ``c_proj`` layers are ``Conv1D`` (weight stored input x output): the adapters take their widths."""
    from deepopt_core.passes.finetune.adapters import AdaptedLinear

    folder = save_architecture("gpt2", tmp_path / "gpt2")
    train = _text_rows(tmp_path / "train.npz", 1)
    result = optimize(folder, [{**TRAIN, "method": method, "bottleneck_size": 4}], {"train": train}, ["onnx"],
                      workdir=tmp_path / "out", benchmark=BENCH)
    decision = result.decisions[0]
    assert decision["target_modules"] and all(t.endswith("c_proj") for t in decision["target_modules"])
    assert decision["trainable_parameters"] > 0 and [a for a in result.artifacts if a.format == "onnx"]
    layer = AdaptedLinear(_conv1d(16, 48), method.removeprefix("adapter_"), 4)
    assert layer.adapter.down.in_features == (48 if method == "adapter_series" else 16)
    assert layer.adapter.up.out_features == 48


def _conv1d(features_in: int, features_out: int) -> object:
    from transformers.pytorch_utils import Conv1D

    return Conv1D(features_out, features_in)


@pytest.mark.parametrize(("class_name", "method"), [(None, "lora"), ("ViTForImageClassification", "adapter_series")])
def test_vit_gets_an_image_classification_head(class_name, method, tmp_path):
    """A ViT base model gets ``ViTForImageClassification`` (pixel_values in); a ViT classifier whose labels use
    fewer classes than its head keeps its head; adapters go on Linear layers, not the patch convolution."""
    folder = save_architecture("vit", tmp_path / "vit", class_name)
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(ROWS, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "train.npz", pixel_values=pixels, labels=np.zeros(ROWS, np.int64))  # one class used
    outputs = ["hf", "onnx"] if method == "lora" else ["onnx"]
    result = optimize(folder, [{**TRAIN, "method": method}], {"train": tmp_path / "train.npz"}, outputs,
                      workdir=tmp_path / "out", benchmark=BENCH)
    decision = result.decisions[0]
    assert decision["num_labels"] == 2  # not 1: transformers takes no one-class classifier (the fixture's has 2)
    if method == "lora":
        saved = _unzip(next(a.path for a in result.artifacts if a.format == "hf"), tmp_path / "hf")
        config = json.loads((saved / "config.json").read_text())
        assert config["architectures"] == ["ViTForImageClassification"] and "pad_token_id" not in config
    else:
        assert not any("projection" in t for t in decision["target_modules"])


def test_decoder_tokenizer_pads_with_eos_in_the_output(tmp_path):
    """Text (.jsonl) on GPT-2 with its pad-less byte-level tokenizer: padded with the end-of-sequence token, which
    the output's tokenizer files and config keep."""
    from transformers import AutoTokenizer, GPT2Tokenizer

    folder = save_architecture("gpt2", tmp_path / "gpt2")
    vocab = {"<unk>": 0, "<s>": 1, "<|endoftext|>": 2, **{c: i + 3 for i, c in enumerate("abcdefghij")}, "Ġ": 13}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], eos_token="<|endoftext|>", bos_token="<s>",
                                  unk_token="<unk>")
        assert tokenizer.pad_token is None
        tokenizer.save_pretrained(str(folder))
    rng = np.random.default_rng(0)
    rows = [{"text": " ".join("abcdefghij"[int(c)] for c in rng.integers(0, 10, int(rng.integers(2, 8)))),
             "label": i % 2} for i in range(ROWS)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = optimize(folder, [{**TRAIN, "method": "full"}], {"train": tmp_path / "train.jsonl"}, ["hf"],
                      workdir=tmp_path / "out", benchmark=BENCH)
    saved = _unzip(next(a.path for a in result.artifacts if a.format == "hf"), tmp_path / "hf")
    assert json.loads((saved / "config.json").read_text())["pad_token_id"] == 2
    assert AutoTokenizer.from_pretrained(str(saved)).pad_token == "<|endoftext|>"


def test_a_decoder_without_pad_or_eos_is_refused_at_submit():
    from pydantic import TypeAdapter

    from deepopt_core.specs import PassSpec

    def problems(details: dict, **fields: object) -> list[tuple[tuple[str | int, ...], str]]:
        spec = TypeAdapter(PassSpec).validate_python({**TRAIN, "method": "lora", **fields})
        model = {"format": "hf", "details": {"model_type": "qwen2", "task": "text-generation",
                                             "has_tokenizer": False, **details}}
        return check_pass(spec, SubmitContext(model=model, train={"format": "npz", "has_labels": True}))

    refused = problems({"pad_token_id": None, "eos_token_id": None})
    assert [loc for loc, _ in refused] == [("pad_token_id",)] and "pad_token_id" in refused[0][1]
    assert problems({"pad_token_id": None, "eos_token_id": None}, pad_token_id=0) == []
    assert problems({"pad_token_id": None, "eos_token_id": 2}) == []
    assert problems({"pad_token_id": None, "eos_token_id": None, "has_tokenizer": True}) == []
    assert problems({}) == []  # an inspection from before the token ids were recorded: checked when the job runs


def test_inspection_records_the_token_ids(tmp_path):
    from deepopt_core.formats.hf_inspect import inspect_hf

    details = inspect_hf(save_architecture("llama", tmp_path / "llama")).details
    assert details["pad_token_id"] is None and details["eos_token_id"] == 2
    assert "eos_token_id" not in inspect_hf(save_architecture("vit", tmp_path / "vit")).details


def test_a_decoder_without_pad_or_eos_trains_with_the_pad_token_id_given(tmp_path):
    """Qwen2 with no pad or end-of-sequence token in its config (the matrix's is so): the spec's `pad_token_id`
    pads; without it the job refuses with the field named (at submit, see above; here when the job runs)."""
    from deepopt_core.errors import PassFailed

    folder = save_architecture("qwen2", tmp_path / "qwen2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "bos_token_id": None, "eos_token_id": None}))
    train = _text_rows(tmp_path / "train.npz", 1)
    with pytest.raises(PassFailed, match="pad_token_id"):
        optimize(folder, [{**TRAIN, "method": "full"}], {"train": train}, ["hf"], workdir=tmp_path / "refused",
                 benchmark=BENCH)
    result = optimize(folder, [{**TRAIN, "method": "full", "pad_token_id": 0}], {"train": train}, ["hf"],
                      workdir=tmp_path / "out", benchmark=BENCH)
    saved = _unzip(next(a.path for a in result.artifacts if a.format == "hf"), tmp_path / "hf")
    assert json.loads((saved / "config.json").read_text())["pad_token_id"] == 0
