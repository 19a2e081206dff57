"""Describe a Hugging Face model (.zip, .tar.gz or folder) from config.json and the safetensors headers.

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
_TASK_OUTPUTS = ("ForSequenceClassification", "ForTokenClassification", "ForMaskedLM", "ForCausalLM",
                 "ForMultipleChoice", "ForPreTraining", "ForQuestionAnswering")


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


def architecture_of(config: dict[str, Any]) -> str | None:
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None


def hf_input_names(config: dict[str, Any]) -> list[str]:
    """input_ids, attention_mask, and token_type_ids for BERT-like configs (those with ``type_vocab_size``)."""
    names = ["input_ids", "attention_mask"]
    if config.get("type_vocab_size"):
        names.append("token_type_ids")
    return names


def inspect_hf(path: str | Path) -> ModelInfo:
    """Describe a Hugging Face archive or folder: architecture, parameters (from the safetensors headers),
    inputs (token ids, attention mask and, for BERT-like models, token type ids; int64 [batch, sequence]).

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
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else None
    output = "logits" if architecture and architecture.endswith(_TASK_OUTPUTS) else "last_hidden_state"
    return ModelInfo(
        format="hf",
        inputs=[TensorInfo(name=n, shape=["batch", "sequence"], dtype="int64") for n in hf_input_names(config)],
        outputs=[TensorInfo(name=output, shape=None)],
        num_parameters=parameters,
        op_types={},
        prunable_layers=prunable,
        architecture=architecture,
        details={
            "model_type": config.get("model_type"),
            "has_tokenizer": any(name in files for name in TOKENIZER_MARKERS),
            "num_labels": len(config.get("id2label") or {}) or None,
            "vocab_size": config.get("vocab_size"),
            "files": files,
            "size_bytes": Path(path).stat().st_size if Path(path).is_file() else None,
        },
    )
