"""Describe a Hugging Face model (.zip, .tar.gz or folder) from config.json and the safetensors headers.

The architecture decides the inputs and outputs (``pixel_values`` for image models, token ids with or without
token types for text ones; a head's ``logits`` or a base model's hidden states), read from ``model_type`` and
``architectures`` alone: inspection runs in the sandbox, where importing transformers' models (and torch) would
cost seconds per upload for facts a table gives.

Standard library only, and nothing is extracted to disk: the members are read in place (zip) or streamed
(tar), and of each weights file only the JSON header is read. The archive's member names, types and sizes have
already been checked by :func:`deepopt_core.formats.detect.detect_format`.
"""

from __future__ import annotations

import json
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Any

from deepopt_core.errors import InvalidModel
from deepopt_core.specs import ModelInfo, TensorInfo

HEADER_LIMIT = 100 * 1024 * 1024
CONFIG_LIMIT = 16 * 1024 * 1024
TOKENIZER_MARKERS = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def read_safetensors_header(stream: IO[bytes], name: str, size: int | None = None) -> dict[str, Any]:
    """The JSON header of a safetensors stream (tensor name -> dtype, shape, offsets)."""
    raw = stream.read(8)
    if len(raw) != 8:
        raise InvalidModel(f"{name} is not a safetensors file")
    (length,) = struct.unpack("<Q", raw)
    if length > HEADER_LIMIT or (size is not None and length > size - 8):
        raise InvalidModel(f"{name} has an implausible safetensors header")
    try:
        header = json.loads(stream.read(length))
    except ValueError:
        raise InvalidModel(f"{name} has an unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise InvalidModel(f"{name} has an unreadable safetensors header")
    header.pop("__metadata__", None)
    return header


def _parse_config(data: bytes) -> dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModel(f"config.json is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidModel("config.json must be a JSON object")
    return config


def _root(names: list[str]) -> str:
    for name in names:
        parts = name.strip("/").split("/")
        if parts[-1] == "config.json" and len(parts) <= 2:
            return parts[0] + "/" if len(parts) == 2 else ""
    raise InvalidModel("the archive has no config.json at its root or in one top folder")


def _in_root(name: str, root: str) -> str | None:
    name = name.strip("/").removeprefix("./")
    if not name.startswith(root):
        return None
    rest = name[len(root):]
    return rest if rest and "/" not in rest else None


def read_facts(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """(config, safetensors headers by file name, file names) of a folder, .zip or .tar(.gz)."""
    path = Path(path)
    headers: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        config = _parse_config((path / "config.json").read_bytes())
        for file in sorted(path.glob("*.safetensors")):
            with open(file, "rb") as handle:
                headers[file.name] = read_safetensors_header(handle, file.name, file.stat().st_size)
        return config, headers, sorted(p.name for p in path.iterdir() if p.is_file())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            root = _root([i.filename for i in infos])
            files = {rel: info for info in infos if (rel := _in_root(info.filename, root))}
            if files.get("config.json") is None or files["config.json"].file_size > CONFIG_LIMIT:
                raise InvalidModel("config.json is missing or too large")
            config = _parse_config(archive.read(files["config.json"]))
            for rel, info in sorted(files.items()):
                if rel.endswith(".safetensors"):
                    with archive.open(info) as stream:
                        headers[rel] = read_safetensors_header(stream, rel, info.file_size)
            return config, headers, sorted(files)
    return _read_tar(path)


def _read_tar(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    configs: dict[str, bytes] = {}
    headers_by_name: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    try:
        with tarfile.open(path, "r|*") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                name = info.name.strip("/").removeprefix("./")
                names.append(name)
                depth = name.count("/")
                if depth > 1:
                    continue
                if name.endswith("config.json") and name.rsplit("/", 1)[-1] == "config.json":
                    if info.size > CONFIG_LIMIT:
                        raise InvalidModel("config.json is too large")
                    stream = archive.extractfile(info)
                    configs[name] = stream.read() if stream else b""
                elif name.endswith(".safetensors"):
                    stream = archive.extractfile(info)
                    if stream is not None:
                        headers_by_name[name] = read_safetensors_header(stream, name, info.size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidModel(f"the tar archive is truncated or corrupt: {exc}") from None
    root = _root(names)
    config = _parse_config(configs[f"{root}config.json"])
    headers = {rel: h for name, h in headers_by_name.items() if (rel := _in_root(name, root))}
    return config, headers, sorted(rel for name in names if (rel := _in_root(name, root)))


VISION_MODEL_TYPES = frozenset({
    "beit", "bit", "convnext", "convnextv2", "cvt", "deit", "dinov2", "efficientformer", "efficientnet", "focalnet",
    "hiera", "levit", "mobilenet_v1", "mobilenet_v2", "mobilevit", "mobilevitv2", "poolformer", "pvt", "pvt_v2",
    "regnet", "resnet", "segformer", "swin", "swinv2", "van", "vit", "vit_hybrid", "vit_msn",
})  # fmt: skip
"""Model types whose models take ``pixel_values`` (an image batch) instead of token ids."""
_NO_TOKEN_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "longformer", "distilbert"})
# Their configs may carry a type_vocab_size (RobertaConfig's default is 2), but their tokenizers never produce
# token_type_ids, so a dataset tokenized for them has none.
_POOLED_BASES = frozenset({
    "albert", "bert", "camembert", "convnext", "convnextv2", "deit", "dinov2", "efficientnet", "mobilenet_v1",
    "mobilenet_v2", "mpnet", "regnet", "resnet", "roberta", "swin", "vit", "xlm-roberta",
})  # fmt: skip
"""Model types whose base model (``BertModel``, ``ViTModel``, ...) returns ``pooler_output`` after
``last_hidden_state``."""
_TASKS = (
    ("ForCausalLM", "text-generation"), ("LMHeadModel", "text-generation"),
    ("ForSequenceClassification", "text-classification"), ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"), ("ForMaskedLM", "fill-mask"),
    ("ForMultipleChoice", "multiple-choice"), ("ForImageClassification", "image-classification"),
)  # fmt: skip
_FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_COUNT_LIMIT = 2**31 - 1


def _count(config: dict[str, Any], *keys: str) -> int | None:
    """The first of `keys` that holds a plausible count; a hostile config's strings, floats or huge numbers are
    ignored rather than stored."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _COUNT_LIMIT:
            return value
    return None


def architecture_of(config: dict[str, Any]) -> str | None:
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None


def is_vision(config: dict[str, Any]) -> bool:
    """Whether the model takes ``pixel_values``: a known image model type, or (for one this list lacks) a config
    with image channels and no vocabulary."""
    if config.get("model_type") in VISION_MODEL_TYPES:
        return True
    return "num_channels" in config and "vocab_size" not in config and "text_config" not in config


def image_dims(config: dict[str, Any]) -> tuple[int | str, int | str]:
    """(height, width) of the images the model takes: ``image_size`` from the config (an int or [h, w]), else
    symbolic (a ResNet config has no image size: its convolutions take any)."""
    size = config.get("image_size")
    if isinstance(size, list) and len(size) == 2:
        height, width = (_count({"v": d}, "v") for d in size)
        if height and width:
            return height, width
    side = _count(config, "image_size")
    return (side, side) if side else ("height", "width")


def hf_input_names(config: dict[str, Any]) -> list[str]:
    """The inputs the model takes, in the wrapper's positional order: ``pixel_values`` for image models; else
    input_ids, attention_mask, and token_type_ids where the model has token types (BERT-like: a
    ``type_vocab_size`` above 1, and not a RoBERTa-family model)."""
    if is_vision(config):
        return ["pixel_values"]
    names = ["input_ids", "attention_mask"]
    if (_count(config, "type_vocab_size") or 0) > 1 and config.get("model_type") not in _NO_TOKEN_TYPES:
        names.append("token_type_ids")
    return names


def hf_inputs(config: dict[str, Any]) -> list[TensorInfo]:
    """:func:`hf_input_names` with shapes and dtypes: float32 [batch, num_channels, height, width] images or int64
    [batch, sequence] token tensors."""
    names = hf_input_names(config)
    if names == ["pixel_values"]:
        channels = _count(config, "num_channels") or 3
        return [TensorInfo(name="pixel_values", shape=["batch", channels, *image_dims(config)], dtype="float32")]
    return [TensorInfo(name=name, shape=["batch", "sequence"], dtype="int64") for name in names]


def hf_output_names(config: dict[str, Any]) -> list[str]:
    """The tensors the model returns, in order: the task head's (``logits``; ``start_logits``/``end_logits`` for
    question answering), or a base model's ``last_hidden_state`` and, where it has a pooler, ``pooler_output``.

    Key/value caches are not tensors and are not returned by the wrapper (it turns ``use_cache`` off).
    """
    architecture = architecture_of(config) or ""
    if architecture.endswith("ForQuestionAnswering"):
        return ["start_logits", "end_logits"]
    if "For" in architecture or architecture.endswith("LMHeadModel"):
        return ["logits"]
    names = ["last_hidden_state"]
    if config.get("model_type") in _POOLED_BASES:
        names.append("pooler_output")
    return names


def task_of(config: dict[str, Any]) -> str | None:
    """The pipeline task of the architecture (``text-generation`` for ``*ForCausalLM``), ``feature-extraction``
    for a base model, None when the head is not one of :data:`_TASKS`."""
    architecture = architecture_of(config) or ""
    for suffix, task in _TASKS:
        if architecture.endswith(suffix):
            return task
    if "For" in architecture:
        return None
    return "image-feature-extraction" if is_vision(config) else "feature-extraction"


def weights_dtype(headers: dict[str, dict[str, Any]], config: dict[str, Any]) -> str | None:
    """The floating dtype holding most of the weights (safetensors headers), else the config's ``dtype``."""
    counts: dict[str, int] = {}
    for header in headers.values():
        for entry in header.values():
            if isinstance(entry, dict) and entry.get("dtype") in _FLOAT_DTYPES:
                count = 1
                for dim in entry.get("shape", []):
                    count *= int(dim)
                name = _FLOAT_DTYPES[entry["dtype"]]
                counts[name] = counts.get(name, 0) + count
    if counts:
        return max(counts, key=lambda name: counts[name])
    declared = config.get("dtype", config.get("torch_dtype"))
    return declared if isinstance(declared, str) and declared in _FLOAT_DTYPES.values() else None


def config_facts(config: dict[str, Any]) -> dict[str, Any]:
    """Sizes read from the config (:class:`deepopt_core.specs.ModelDetails` fields); absent ones are left out."""
    facts: dict[str, Any] = {
        "task": task_of(config),
        "context_length": _count(config, "max_position_embeddings", "n_positions", "n_ctx"),
        "hidden_size": _count(config, "hidden_size", "n_embd", "d_model", "dim"),
        "num_layers": _count(config, "num_hidden_layers", "n_layer", "n_layers", "num_layers"),
        "num_attention_heads": _count(config, "num_attention_heads", "n_head", "n_heads"),
        "num_key_value_heads": _count(config, "num_key_value_heads"),
        "num_channels": _count(config, "num_channels") if is_vision(config) else None,
        "image_size": _count(config, "image_size") if is_vision(config) else None,
    }
    tied = config.get("tie_word_embeddings")
    if isinstance(tied, bool):
        facts["tie_word_embeddings"] = tied
    return {key: value for key, value in facts.items() if value is not None}


def token_ids(config: dict[str, Any]) -> dict[str, int | None]:
    """The config's pad and (first) end-of-sequence token ids, None where it names none: a decoder's sequence
    classification head needs one of them to find each row's last token (checked at submit)."""
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return {"pad_token_id": _count(config, "pad_token_id"), "eos_token_id": _count({"eos": eos}, "eos")}


def inspect_hf(path: str | Path) -> ModelInfo:
    """Describe a Hugging Face archive or folder from its config.json and safetensors headers: the
    architecture's inputs (:func:`hf_inputs`) and outputs (:func:`hf_output_names`), parameters, weight dtype
    and the config's sizes (:func:`config_facts`).

    ``prunable_layers`` counts 2-D ``*.weight`` tensors that are not embeddings or norms (the Linear layers).
    """
    config, headers, files = read_facts(path)
    if not headers:
        raise InvalidModel("the model folder has no .safetensors weights")
    parameters = prunable = 0
    for header in headers.values():
        for name, entry in header.items():
            shape = entry.get("shape", []) if isinstance(entry, dict) else []
            count = 1
            for dim in shape:
                count *= int(dim)
            parameters += count
            lowered = name.lower()
            if len(shape) >= 2 and lowered.endswith(".weight") and "embed" not in lowered and "norm" not in lowered:
                prunable += 1
    return ModelInfo(
        format="hf",
        inputs=hf_inputs(config),
        outputs=[TensorInfo(name=name, shape=None) for name in hf_output_names(config)],
        num_parameters=parameters,
        op_types={},
        prunable_layers=prunable,
        architecture=architecture_of(config),
        details={
            "model_type": config.get("model_type") if isinstance(config.get("model_type"), str) else None,
            "has_tokenizer": any(name in files for name in TOKENIZER_MARKERS),
            "num_labels": len(labels) if isinstance(labels := config.get("id2label"), dict) and labels else None,
            "vocab_size": _count(config, "vocab_size"),
            **({} if is_vision(config) else token_ids(config)),
            "dtype": weights_dtype(headers, config),
            **config_facts(config),
            "files": files,
            "size_bytes": Path(path).stat().st_size if Path(path).is_file() else None,
        },
    )
