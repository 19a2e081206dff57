"""The `finetune` pass trains for real on tiny data: LoRA learns and merges to the same function, the adapter
reloads with PEFT, the Hugging Face output loads with its trained head, quantized bases merge correctly, the
other methods train only their own parameters, and bad specs are refused at submit."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deepopt_core.errors import PassFailed
from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.passes.context import PassContext, load_handle
from deepopt_core.pipeline import optimize
from deepopt_core.specs import PassSpec

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(120),
              pytest.mark.usefixtures("one_torch_thread")]
BENCH = {"batch_sizes": [2], "runs": 2, "warmup": 1, "threads": 1}
WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_bert(tmp_path_factory.mktemp("ft-bert"))


def tiny_bert(out: Path) -> dict[str, Path]:
    """A random 2-layer BERT classifier (3 labels) with a real WordPiece vocabulary as a Hugging Face .zip, and
    text whose label is the range its words come from (train.jsonl 180 rows, eval.jsonl 60); tests/e2e uses it."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = out / "bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        BertForSequenceClassification(config).eval().save_pretrained(str(folder))
        vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
        BertTokenizer(vocab=vocab).save_pretrained(str(folder))
    archive = out / "bert.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, f"bert/{file.name}")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(240):
        label = i % 3
        words = rng.integers(20 * label, 20 * label + 20, size=int(rng.integers(3, 9)))
        rows.append(json.dumps({"text": " ".join(WORDS[w] for w in words), "label": label}))
    (out / "train.jsonl").write_text("\n".join(rows[:180]) + "\n")
    (out / "eval.jsonl").write_text("\n".join(rows[180:]) + "\n")
    return {"model": archive, "folder": folder, "train": out / "train.jsonl", "eval": out / "eval.jsonl"}


def test_lora_learns_merges_and_reloads(bert, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    events: list[tuple[float, str, dict | None]] = []
    spec = {"type": "finetune", "method": "lora", "r": 4, "lr": 0.02, "epochs": 8, "batch_size": 16,
            "target_modules": ["query", "value", "word_embeddings"]}
    result = optimize(bert["model"], [spec], {"train": bert["train"], "eval": bert["eval"]}, ["hf", "onnx"],
                      workdir=tmp_path, benchmark=BENCH, on_progress=lambda f, s, m=None: events.append((f, s, m)))
    decision = result.decisions[0]
    assert decision["before"]["accuracy"] < 0.5 and decision["after"]["accuracy"] >= 0.9  # chance is 1/3
    assert decision["trainable_fraction"] < 0.2 and decision["trainable_parameters"] > 0
    assert decision["merge_fidelity"]["fidelity_cosine"] > 0.99999 and decision["merge_fidelity"]["max_abs_diff"] < 1e-4
    assert decision["adapter_reload_max_abs_diff"] < 1e-5
    assert decision["loss_curve"][-1][1] < decision["loss_curve"][0][1]
    assert result.decisions[1].get("reused_from_track") == "torch"  # trained once for both outputs
    losses = [m for _, _, m in events if m]
    assert losses and all("loss" in m and "step" in m for m in losses)
    assert any(s.startswith("finetune") and "loss" in s for _, s, m in events if m)
    assert [f for f, _, _ in events] == sorted(f for f, _, _ in events)

    kinds = {a.kind: a for a in result.artifacts if a.kind in ("adapter", "model")}
    hf_out = next(a for a in result.artifacts if a.format == "hf")
    unpacked = tmp_path / "hf"
    zipfile.ZipFile(hf_out.path).extractall(unpacked)
    tokenizer = AutoTokenizer.from_pretrained(str(unpacked / "bert-optimized"))
    merged = AutoModelForSequenceClassification.from_pretrained(str(unpacked / "bert-optimized")).eval()
    texts = [json.loads(line)["text"] for line in bert["eval"].read_text().splitlines()]
    labels = np.array([json.loads(line)["label"] for line in bert["eval"].read_text().splitlines()])
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    assert (merged_logits.argmax(-1).numpy() == labels).mean() >= 0.9  # the trained head came along

    adapter = tmp_path / "adapter"
    zipfile.ZipFile(kinds["adapter"].path).extractall(adapter)
    assert (adapter / "adapter" / "adapter_config.json").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(str(bert["folder"])).eval()
    with torch.no_grad():
        base_logits = base(**batch).logits
        adapted = PeftModel.from_pretrained(base, str(adapter / "adapter")).eval()
        adapter_logits = adapted(**batch).logits
    assert (adapter_logits - base_logits).abs().max() > 0.1  # the adapter changes the outputs
    torch.testing.assert_close(adapter_logits, merged_logits, atol=1e-4, rtol=1e-4)  # and merges to the same


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_quantized_base_merge_requantizes(bert, tmp_path, bits):
    import torch

    from deepopt_core.passes.finetune import adapters
    from deepopt_core.passes.finetune.impl import apply_torch

    spec = _spec({"method": "lora", "r": 4, "lr": 0.02, "epochs": 2, "base_quantization": bits})
    ctx, model = _ctx(bert, tmp_path)
    trained = apply_torch(spec, model, ctx)
    quantized = [m for m in trained.modules() if isinstance(m, adapters.QuantLinear)]
    assert quantized and ctx.decisions["requantized_layers"] == 4 and ctx.decisions["quantized_base_layers"] == 13
    levels = 127 if bits == "int8" else 8
    assert all(int(m.codes.abs().max()) <= levels for m in quantized)
    fidelity = ctx.decisions["merge_fidelity"]
    assert fidelity["fidelity_cosine"] > (0.999 if bits == "int8" else 0.99)
    weight = torch.randn(16, 64)
    codes, scales = adapters.quantize_weight(weight, 4)
    assert scales.shape == (16, 2) and (adapters.dequantize_weight(codes, scales) - weight).abs().max() < scales.max()


@pytest.mark.parametrize("method", ["adapter_series", "adapter_parallel", "prefix"])
def test_other_methods_train_only_their_parameters(bert, tmp_path, method):
    import torch

    from deepopt_core.formats.torch_common import run_module
    from deepopt_core.passes.finetune.impl import apply_torch

    ctx, model = _ctx(bert, tmp_path)
    names = [t.name for t in ctx.info.inputs]
    before = run_module(model, ctx.sample, names)[0]
    settings = {"bottleneck_size": 8} if method != "prefix" else {"num_virtual_tokens": 4}
    trained = apply_torch(_spec({"method": method, "lr": 0.01, "epochs": 2, **settings}), model, ctx)
    after = run_module(trained, ctx.sample, names)[0]
    assert np.abs(after - before).max() > 1e-3
    assert 0 < ctx.decisions["trainable_fraction"] < 0.5
    artifact = ctx.artifacts[0]
    assert artifact.kind == "adapter" and artifact.format == "safetensors"
    with zipfile.ZipFile(artifact.path) as zf:
        config = json.loads(zf.read("adapter/adapter_config.json"))
    assert config["method"] == method and config["parameters"]
    with torch.no_grad():
        traced = torch.jit.trace(trained, tuple(torch.from_numpy(ctx.sample[n]) for n in names), strict=False)
    np.testing.assert_allclose(traced(*[torch.from_numpy(ctx.sample[n]) for n in names])[0].numpy(), after,
                               atol=1e-5)


def test_npz_classification_and_regression_on_torch_export(digits, digits_train, tmp_path):
    from deepopt_core.passes.finetune.impl import apply_torch

    ctx, model = _digits_ctx(digits, digits_train, tmp_path)
    trained = apply_torch(_spec({"method": "lora", "r": 4, "lr": 5e-3, "epochs": 2, "batch_size": 64,
                                 "target_modules": ["fc1", "fc2"], "mixed_precision": "bf16",
                                 "gradient_accumulation_steps": 2}), model, ctx)
    assert ctx.decisions["target_modules"] == ["fc1", "fc2"]
    assert ctx.decisions["after"]["accuracy"] >= ctx.decisions["before"]["accuracy"] - 0.02
    assert ctx.decisions["steps"] == 2 * int(np.ceil(np.ceil(0.9 * 1347 / 64) / 2))
    assert type(trained).__name__.endswith("GraphModule") or hasattr(trained, "graph")

    regression = tmp_path / "regression.npz"
    data = np.load(digits_train)
    np.savez(regression, input=data["input"], labels=data["labels"].astype(np.float32) / 9)
    ctx, model = _digits_ctx(digits, regression, tmp_path / "r", eval_path=regression)
    apply_torch(_spec({"method": "full", "lr": 3e-3, "epochs": 3, "batch_size": 64}), model, ctx)
    assert ctx.decisions["task"] == "regression" and ctx.decisions["num_labels"] == 1
    assert ctx.decisions["after"]["mse"] < 0.5 * ctx.decisions["before"]["mse"]

    with pytest.raises(PassFailed, match="match no layer"):
        ctx, model = _digits_ctx(digits, digits_train, tmp_path / "x")
        apply_torch(_spec({"method": "lora", "target_modules": ["nope"]}), model, ctx)


def test_submit_time_checks():
    bert_model = {"format": "hf", "details": {"model_type": "bert", "has_tokenizer": True}, "num_parameters": 100}
    text = {"format": "jsonl", "num_rows": 10, "has_labels": True}

    def problems(spec: dict, model: dict = bert_model, train: dict | None = text) -> list[str]:
        config = _spec(spec)
        return [message for _, message in check_pass(config, SubmitContext(model=model, train=train))]

    assert problems({"method": "lora"}) == []
    assert "train_dataset_id" in problems({"method": "lora"}, train=None)[0]
    assert "match no module" in problems({"method": "lora", "target_modules": ["q_proj"]})[0]
    assert problems({"method": "lora", "target_modules": ["encoder.layer.3.attention.self.query"]}) == []
    assert "no labels" in problems({"method": "full"}, train={**text, "has_labels": False})[0]
    assert "TorchScript" in problems({"method": "lora"}, {"format": "torchscript", "details": {}},
                                     {"format": "npz", "has_labels": True})[0]
    assert "Hugging Face" in problems({"method": "lora"}, {"format": "torch_export", "details": {}})[0]
    assert "prefix tuning needs" in problems({"method": "prefix"}, {"format": "torch_export", "details": {}},
                                             {"format": "npz", "has_labels": True})[0]
    assert _spec({"method": "adapter_series"}).output_problem("hf")
    assert _spec({"method": "lora", "merge": False}).output_problem("hf")
    assert _spec({"method": "lora"}).output_problem("hf") is None
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _spec({"method": "lora", "r": 0})
    with pytest.raises(ValidationError):
        _spec({"method": "dora"})


# ---------------------------------------------------------------------------------------------------------------


def _spec(fields: dict) -> object:
    from pydantic import TypeAdapter

    return TypeAdapter(PassSpec).validate_python({"type": "finetune", "batch_size": 16, **fields})


def _ctx(bert: dict[str, Path], tmp_path: Path) -> tuple[PassContext, object]:
    from deepopt_core.datasets import load_dataset
    from deepopt_core.evaluate.inputs import dataset_feed
    from deepopt_core.formats import inspect_model
    from deepopt_core.formats.hf import load_tokenizer

    info = inspect_model(bert["model"])
    handle = load_handle(bert["model"], info, tmp_path)
    tokenizer = load_tokenizer(handle.hf_folder)
    evaluation = load_dataset(bert["eval"])
    sample = dataset_feed(info, evaluation, tokenizer=tokenizer, max_rows=4)
    ctx = PassContext(workdir=tmp_path, info=info, sample=sample, train=load_dataset(bert["train"]), eval=evaluation,
                      tokenizer=tokenizer, source=bert["model"], hf_folder=handle.hf_folder, outdir=tmp_path,
                      outputs=["onnx"])
    return ctx, handle.model


@pytest.fixture(scope="module")
def digits_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.digits import digits_split

    x, y, _, _ = digits_split(0)
    path = tmp_path_factory.mktemp("ft-digits") / "train.npz"
    np.savez(path, input=x, labels=y)
    return path


def _digits_ctx(digits: dict[str, Path], train: Path, tmp_path: Path, eval_path: Path | None = None
                ) -> tuple[PassContext, object]:
    from deepopt_core.datasets import load_dataset
    from deepopt_core.formats import inspect_model

    tmp_path.mkdir(parents=True, exist_ok=True)
    info = inspect_model(digits["torch_export"])
    handle = load_handle(digits["torch_export"], info, tmp_path)
    ctx = PassContext(workdir=tmp_path, info=info, sample={"input": np.zeros((2, 64), np.float32)},
                      train=load_dataset(train), eval=load_dataset(eval_path or digits["eval"]), outdir=tmp_path,
                      source=digits["torch_export"], outputs=["torch_export"])
    return ctx, handle.model
