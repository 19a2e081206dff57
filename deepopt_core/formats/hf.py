"""Hugging Face models uploaded as a .zip or .tar.gz of a saved folder (config.json + *.safetensors): load, save.

Inspection is in :mod:`deepopt_core.formats.hf_inspect` (no torch, nothing extracted). Loading unpacks the
archive with :func:`deepopt_core.formats.detect.safe_extract` and hands config.json and the safetensors files
(nothing else) to transformers' ``from_pretrained``: nothing is fetched from the network (``HF_HUB_OFFLINE=1``)
and no remote code runs (the upload review refused code and pickles). The tokenizer is loaded from the folder
when present.
"""

from __future__ import annotations

import inspect
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
from deepopt_core.formats.hf_inspect import (
    TOKENIZER_MARKERS,
    architecture_of,
    hf_input_names,
    inspect_hf,
    read_safetensors_header,
)

__all__ = ["inspect_hf", "load_hf", "load_tokenizer", "save_hf", "unpack"]

log = logging.getLogger("deepopt.formats")

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
    "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)  # fmt: skip
INDEX_NAME = "model.safetensors.index.json"
INDEX_LIMIT = 64 * 1024 * 1024


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
            # A causal LM would also build a key/value cache, which is no tensor (the wrapper drops it) and which
            # tracing and ONNX export stumble over.
            takes_cache = "use_cache" in inspect.signature(model.forward).parameters
            self.call_options: dict[str, bool] = {"use_cache": False} if takes_cache else {}

        def _call(self, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.hf_model(**kwargs, **self.call_options, return_dict=True)
            if not self.output_names:
                self.output_names = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))

    if names == ("input_ids", "attention_mask", "token_type_ids"):

        class HFWrapper3(HFWrapper):
            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
                return self._call(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

        return HFWrapper3

    if names == ("pixel_values",):

        class HFWrapperImage(HFWrapper):
            def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
                return self._call(pixel_values=pixel_values)

        return HFWrapperImage

    class HFWrapper2(HFWrapper):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self._call(input_ids=input_ids, attention_mask=attention_mask)

    return HFWrapper2


def load_hf(path: str | Path, workdir: str | Path | None = None, *, dtype: str = "float32") -> tuple[Any, Path]:
    """Load the model with transformers' own ``from_pretrained``, from safetensors only; no network, no remote code.

    transformers knows each checkpoint's quirks, which a hand-made ``load_state_dict`` got wrong: buffers older
    versions saved (``embeddings.position_ids``), tied weights absent from the file (GPT-2's ``lm_head``), sharded
    weights with their index, fp16/bf16 files, and a base model's weights in a task head's class (or the reverse:
    ``base_model_prefix``). It reads a staged copy of the folder (:func:`_stage`), so that the other files of an
    upload (adapter configs, custom generation code) are never looked at, whatever a transformers version does.

    Args:
        path: archive or folder (already reviewed at upload: no code, no pickles).
        workdir: where to unpack an archive (a temp dir if None).
        dtype: the dtype the job works in; weights stored in another (float16, bfloat16) are converted.

    Returns:
        (wrapper module taking inputs positionally, unpacked folder).

    Raises:
        InvalidModel: unknown architecture, or weights that do not fit it: missing (other than tied ones) or of
            another shape, named. Weights the class does not use (a head loaded as its base model) are logged.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers

    dest = Path(tempfile.mkdtemp(prefix="hf-source-", dir=workdir)) if workdir is not None else None
    folder = unpack(path, dest)
    config_dict = read_config(folder)
    if "quantization_config" in config_dict:  # a quantized artifact of this service (compressed-tensors)
        from deepopt_core.formats.hf_quantized import load_compressed

        return _wrapper_class(tuple(hf_input_names(config_dict)))(load_compressed(folder, config_dict)).eval(), folder
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a torch floating dtype")
    model_class = _model_class(transformers, config_dict)
    name = model_class.__name__ if model_class is not None else str(config_dict.get("model_type"))
    with tempfile.TemporaryDirectory(prefix="hf-staged-", dir=workdir) as tmp:
        staged = Path(tmp)
        _stage(folder, config_dict, staged)
        try:
            config = transformers.AutoConfig.from_pretrained(str(staged), trust_remote_code=False,
                                                             local_files_only=True)
        except Exception as exc:
            raise InvalidModel(f"config.json is not a known Hugging Face config: {str(exc)[:300]}") from None
        loader = model_class if model_class is not None else transformers.AutoModel
        try:
            model, loading = loader.from_pretrained(
                str(staged), config=config, trust_remote_code=False, local_files_only=True, use_safetensors=True,
                dtype=torch_dtype, ignore_mismatched_sizes=True, output_loading_info=True,
            )
        except Exception as exc:
            raise InvalidModel(f"cannot load {name} from the weights: {str(exc).splitlines()[0][:300]}") from None
    _check_loading(type(model).__name__, loading)
    names = tuple(hf_input_names(config_dict))
    return _wrapper_class(names)(model.eval()).eval(), folder


def _model_class(transformers: Any, config_dict: dict[str, Any]) -> Any | None:
    """The class ``architectures`` names, when it is a transformers model class; None for ``AutoModel``."""
    architecture = architecture_of(config_dict)
    model_class = getattr(transformers, architecture, None) if architecture else None
    if isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel):
        return model_class
    return None  # only model classes are loaded from config.json, never other callables


def _check_loading(name: str, loading: dict[str, Any]) -> None:
    """Refuse weights that are missing or of another shape (transformers would initialise them randomly)."""
    missing = sorted(loading.get("missing_keys") or [])
    mismatched = sorted(str(key[0] if isinstance(key, tuple) else key) for key in loading.get("mismatched_keys") or [])
    if missing or mismatched:
        raise InvalidModel(f"the weights do not fit {name}: missing {missing[:8]}"
                           f"{f' (and {len(missing) - 8} more)' if len(missing) > 8 else ''}, of another shape "
                           f"{mismatched[:8]}{f' (and {len(mismatched) - 8} more)' if len(mismatched) > 8 else ''}")
    unexpected = sorted(loading.get("unexpected_keys") or [])
    if unexpected:
        log.warning("%s does not use %d weights of the checkpoint: %s", name, len(unexpected), unexpected[:8])


def _stage(folder: Path, config_dict: dict[str, Any], staged: Path) -> None:
    """Fill `staged` with config.json and the weights (linked), named as ``from_pretrained`` looks for them.

    One weights file becomes ``model.safetensors``; the shards a ``model.safetensors.index.json`` names are
    linked with it; several files without an index get an index written from their headers (every file is
    loaded, as before). ``transformers_weights``, a config key that points transformers at another file name, is
    dropped.
    """
    config = {key: value for key, value in config_dict.items() if key != "transformers_weights"}
    (staged / "config.json").write_text(json.dumps(config), encoding="utf-8")
    index_file = folder / INDEX_NAME
    if index_file.is_file():
        indexed = _read_index(index_file)
        for shard in sorted(set(indexed.values())):
            if "/" in shard or "\\" in shard or shard.startswith(".") or not shard.endswith(".safetensors") or not (
                    folder / shard).is_file():
                raise InvalidModel(f"{INDEX_NAME} names the shard {shard[:200]!r}, which is not a .safetensors "
                                   "file of the folder")
            _link(folder / shard, staged / shard)
        (staged / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": indexed}), encoding="utf-8")
        return
    files = _weight_files(folder)
    if len(files) == 1:
        _link(files[0], staged / "model.safetensors")
        return
    weight_map: dict[str, str] = {}
    for file in files:
        with open(file, "rb") as handle:
            for tensor in read_safetensors_header(handle, file.name, file.stat().st_size):
                if tensor in weight_map:
                    raise InvalidModel(f"the tensor {tensor[:200]!r} is in both {weight_map[tensor]} and {file.name}")
                weight_map[tensor] = file.name
        _link(file, staged / file.name)
    (staged / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")


def _read_index(index_file: Path) -> dict[str, str]:
    try:
        if index_file.stat().st_size > INDEX_LIMIT:
            raise InvalidModel(f"{INDEX_NAME} is larger than {INDEX_LIMIT} bytes")
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModel(f"{INDEX_NAME} is unreadable: {exc}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in weight_map.items()):
        raise InvalidModel(f"{INDEX_NAME} has no weight_map of tensor names to file names")
    return weight_map


def _link(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source.resolve())
    except OSError:  # a file system without symbolic links
        shutil.copyfile(source, target)


def load_tokenizer(folder: Path) -> Any | None:
    """The tokenizer saved in the folder, or None when it has none.

    A tokenizer without a pad token (GPT-2's, Llama's) pads with its end-of-sequence token, as transformers users
    set it: batches of texts of different lengths need one.
    """
    if not has_tokenizer(folder):
        return None
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                           trust_remote_code=False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
