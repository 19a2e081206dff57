"""Review of a Hugging Face folder (.zip, .tar.gz or unpacked) before anything loads it. Standard library only.

DeepOpt loads the model with transformers' ``from_pretrained`` from a staged copy holding config.json and the
safetensors files only (``use_safetensors=True``, ``trust_remote_code=False``), and the tokenizer with
``trust_remote_code=False``; a folder that would need more than that is refused at upload, so that no later code
path (or a transformers default that changes) can be talked into running it:

- custom code: any ``*.py`` file, and ``auto_map`` or ``trust_remote_code`` in the JSON configs transformers reads;
- class names that are not plain identifiers (``tokenizer_class``, ``processor_class``, ...), which transformers
  resolves to classes by name;
- pickles, anywhere in the folder, even beside safetensors (``training_args.bin``, ``optimizer.pt``, ...);
- native libraries and sources (:data:`deepopt_core.formats.archives.NATIVE_SUFFIXES`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from deepopt_core.errors import InvalidModel, UnsafeContent
from deepopt_core.formats.archives import check_no_native_code

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
"""Suffixes of files that hold (or usually hold) Python pickles."""
REVIEWED_CONFIGS = frozenset({
    "config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
    "generation_config.json",
})  # fmt: skip
"""The JSON files transformers reads to decide which classes (and which code) to load."""
CONFIG_LIMIT = 16 * 1024 * 1024
_REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")
_CLASS_KEYS = ("tokenizer_class", "processor_class", "image_processor_type", "feature_extractor_type")


def pickle_files(names: list[str]) -> list[str]:
    """The member names (normalised) that are pickle-bearing files."""
    return [name for name in names if name.lower().endswith(PICKLE_SUFFIXES)]


def review_hf_names(names: list[str]) -> None:
    """Refuse custom code, pickles and native libraries by file name.

    Args:
        names: normalised names of the folder's files (anywhere below it).

    Raises:
        UnsafeContent: naming the files to remove.
    """
    check_no_native_code(names)
    code = [name for name in names if name.lower().endswith(".py")]
    if code:
        raise UnsafeContent(f"the Hugging Face folder holds custom code ({', '.join(code[:5])}); custom code is "
                            "never run: remove it and use an architecture transformers has built in")
    pickles = pickle_files(names)
    if pickles:
        raise UnsafeContent(f"the Hugging Face folder holds pickle files; pickles are never loaded: remove "
                            f"{', '.join(pickles[:5])} (weights belong in .safetensors)")


def is_reviewed_config(name: str) -> bool:
    """Whether `name` (a normalised member name) is one of :data:`REVIEWED_CONFIGS`, in any folder."""
    return name.rsplit("/", 1)[-1] in REVIEWED_CONFIGS


def review_hf_configs(configs: dict[str, bytes]) -> None:
    """Refuse JSON configs that ask for remote code or name classes that are not plain identifiers.

    Args:
        configs: member name -> bytes of each file for which :func:`is_reviewed_config` holds.

    Raises:
        UnsafeContent: ``auto_map``, ``trust_remote_code``, or an odd class name.
        InvalidModel: a config that is not JSON.
    """
    for name, data in sorted(configs.items()):
        if len(data) > CONFIG_LIMIT:
            raise InvalidModel(f"{name} is larger than {CONFIG_LIMIT} bytes")
        try:
            value = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidModel(f"{name} is not valid JSON: {exc}") from None
        _review_value(name, value)


def _review_value(name: str, value: Any) -> None:
    """Walk the whole JSON value: transformers reads some of these keys in nested objects too."""
    if isinstance(value, list):
        for item in value:
            _review_value(name, item)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if key in _REMOTE_CODE_KEYS and item not in (None, False, {}):
            raise UnsafeContent(f"{name} asks for custom code ({key!r}); custom code is never run: remove {key!r}")
        if key in _CLASS_KEYS and item is not None and not (
            isinstance(item, str) and item.isascii() and item.isidentifier()
        ):
            raise UnsafeContent(f"{name} has {key} {str(item)[:80]!r}, which is not a plain class name")
        _review_value(name, item)


def review_hf(names: list[str], read: Callable[[str], bytes]) -> None:
    """Both reviews on one folder: by name, then the configs' content.

    Args:
        names: normalised names of the folder's files.
        read: returns the bytes of a file by its name in `names`.
    """
    review_hf_names(names)
    review_hf_configs({name: read(name) for name in names if is_reviewed_config(name)})
