"""Hugging Face models uploaded as a .zip or .tar.gz of a saved folder (config.json + *.safetensors): load, save.

Inspection is in :mod:`deepopt_core.formats.hf_inspect` (no torch, nothing extracted). Loading unpacks the
archive with :func:`deepopt_core.formats.detect.safe_extract`, builds the architecture with ``from_config`` and
fills it from the safetensors files: nothing is fetched from the network (``HF_HUB_OFFLINE=1``) and no remote
code runs. The tokenizer is loaded from the folder when present.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from deepopt_core.errors import InvalidModel
from deepopt_core.formats.archives import MAX_EXPANDED_BYTES, MAX_RATIO, safe_extract
from deepopt_core.formats.hf_inspect import TOKENIZER_MARKERS, hf_input_names, inspect_hf

__all__ = ["inspect_hf", "load_hf", "load_tokenizer", "save_hf", "unpack"]

log = logging.getLogger("deepopt.formats")

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
    "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)  # fmt: skip


def unpack(path: str | Path, dest: str | Path | None = None, *, max_total_bytes: int = MAX_EXPANDED_BYTES,
           max_ratio: float = MAX_RATIO) -> Path:
    """The model folder: `path` itself if it is one, else the archive safely extracted (into `dest` or a temp dir).

    An archive may hold the files at its root or inside one top folder.
    """
    path = Path(path)
    if path.is_dir():
        return path
    target = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="deepopt-hf-"))
    safe_extract(path, target, max_total_bytes, max_ratio)
    if (target / "config.json").is_file():
        return target
    folders = [p for p in target.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if len(folders) != 1:
        raise InvalidModel("the archive must hold one model folder with a config.json")
    return folders[0]


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModel(f"config.json is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidModel("config.json must be a JSON object")
    return config


# --------------------------------------------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InvalidModel("the model folder has no .safetensors weights")
    return files


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_MARKERS)


def _wrapper_class(names: tuple[str, ...]) -> Any:
    import torch
    from torch import nn

    class HFWrapper(nn.Module):
        """Calls a Hugging Face model with positional inputs and returns a tuple (for tracing and ONNX export)."""

        is_hf_wrapper = True

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.hf_model = model
            self.input_names = list(names)
            self.output_names: list[str] = []

        def _call(self, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.hf_model(**kwargs, return_dict=True)
            if not self.output_names:
                self.output_names = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))

    if names == ("input_ids", "attention_mask", "token_type_ids"):

        class HFWrapper3(HFWrapper):
            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
                return self._call(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

        return HFWrapper3

    class HFWrapper2(HFWrapper):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self._call(input_ids=input_ids, attention_mask=attention_mask)

    return HFWrapper2


def load_hf(path: str | Path, workdir: str | Path | None = None) -> tuple[Any, Path]:
    """Build the model from config.json and load its safetensors weights; no network, no remote code.

    Args:
        path: archive or folder.
        workdir: where to unpack an archive (a temp dir if None).

    Returns:
        (wrapper module taking inputs positionally, unpacked folder).

    Raises:
        InvalidModel: unknown architecture, or weights that do not fit it.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers
    from safetensors.torch import load_file

    dest = Path(tempfile.mkdtemp(prefix="hf-source-", dir=workdir)) if workdir is not None else None
    folder = unpack(path, dest)
    config_dict = read_config(folder)
    if "quantization_config" in config_dict:  # a quantized artifact of this service (compressed-tensors)
        from deepopt_core.formats.hf_quantized import load_compressed

        return _wrapper_class(tuple(hf_input_names(config_dict)))(load_compressed(folder, config_dict)).eval(), folder
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False,
                                                         local_files_only=True)
    except Exception as exc:
        raise InvalidModel(f"config.json is not a known Hugging Face config: {str(exc)[:300]}") from None
    architectures = config_dict.get("architectures") or []
    model_class = getattr(transformers, str(architectures[0]), None) if architectures else None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        model_class = None  # only model classes are built from config.json, never other callables
    try:
        model = (model_class(config) if model_class is not None
                 else transformers.AutoModel.from_config(config, trust_remote_code=False))
    except Exception as exc:
        raise InvalidModel(f"cannot build the architecture {architectures}: {str(exc)[:300]}") from None
    state: dict[str, Any] = {}
    for file in _weight_files(folder):
        state.update(load_file(str(file), device="cpu"))
    result = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise InvalidModel(
            f"the weights do not fit {architectures[0] if architectures else config.model_type}: missing "
            f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    names = tuple(hf_input_names(config_dict))
    return _wrapper_class(names)(model.eval()).eval(), folder


def load_tokenizer(folder: Path) -> Any | None:
    """The tokenizer saved in the folder, or None when it has none."""
    if not has_tokenizer(folder):
        return None
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


def save_hf(wrapper: Any, path: str | Path, source_folder: Path, name: str = "model") -> Path:
    """Write config.json, model.safetensors and the tokenizer files into a folder `name/`, zipped at `path`."""
    from safetensors.torch import save_model

    path = Path(path)
    model = getattr(wrapper, "hf_model", wrapper)
    with tempfile.TemporaryDirectory(prefix="deepopt-hf-out-") as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        from deepopt_core.formats import hf_quantized

        if hf_quantized.has_weight_only_layers(model):  # compressed-tensors, checked by loading it with transformers
            hf_quantized.write_compressed(model, folder, read_config(source_folder))
            hf_quantized.check_loads(folder, model, list(getattr(wrapper, "input_names", [])))
        else:
            shutil.copyfile(source_folder / "config.json", folder / "config.json")
            save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for file in source_folder.iterdir():
            if file.is_file() and (file.name in TOKENIZER_FILES or file.name == "generation_config.json"):
                shutil.copyfile(file, folder / file.name)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"{name}/{file.name}")
    return path
