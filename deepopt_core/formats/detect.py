"""Recognise a model file from its bytes, never its name, and unpack archives safely.

Light on purpose (standard library only): the API calls it. Pickles are never loaded: a raw pickle, a
``torch.save`` zip (``data.pkl`` without TorchScript ``code/``), a Hugging Face folder with pickle files, or a
.pt2 archive whose payloads are pickled are all rejected with :class:`UnsafeContent`. So are archives with
duplicate or (for torch's reader) ambiguous member names, native code, and the contents reviewed by
:mod:`deepopt_core.formats.torch_archive` and :mod:`deepopt_core.formats.hf_review` (docs/security.md lists them).
"""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from deepopt_core.errors import InvalidModel, UnsafeContent, UnsupportedFormat
from deepopt_core.formats.archives import (
    GZIP_MAGIC,
    MAX_EXPANDED_BYTES,
    MAX_RATIO,
    Member,
    check_member_name,
    check_members,
    check_no_native_code,
    safe_extract,
    tar_members,
    zip_members,
)
from deepopt_core.formats.hf_review import CONFIG_LIMIT, is_reviewed_config, pickle_files, review_hf
from deepopt_core.formats.torch_archive import canonical_top, is_torch_archive, review_torch_archive
from deepopt_core.specs import ModelFormat

__all__ = ["MAX_EXPANDED_BYTES", "MAX_RATIO", "Member", "check_members", "detect_format", "safe_extract"]

log = logging.getLogger("deepopt.formats")

# ModelProto fields (number -> wire type): ir_version, producer_name, producer_version, domain, model_version,
# doc_string, graph, opset_import, metadata_props, training_info, functions, configuration.
_MODEL_PROTO_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def detect_format(path: str | Path) -> ModelFormat:
    """Return the model format of the file (or unpacked Hugging Face folder) at `path`, from its content.

    Args:
        path: the uploaded file.

    Returns:
        ``"onnx"``, ``"torchscript"``, ``"torch_export"`` or ``"hf"``.

    Raises:
        UnsupportedFormat: empty, garbage, or an archive of something else (415).
        UnsafeContent: pickles, escaping or special archive members, archive bombs (422).
        InvalidModel: a recognised format that is truncated or corrupt (422).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())
            review_hf(files, _bounded_reader(lambda name: (path / name).stat().st_size,
                                             lambda name: (path / name).read_bytes()))
            return "hf"
        raise UnsupportedFormat("a folder must be a Hugging Face model (config.json and *.safetensors)")
    size = path.stat().st_size
    if size == 0:
        raise UnsupportedFormat("the file is empty")
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head[:1] == b"\x80" and len(head) > 1 and 1 <= head[1] <= 5:
        raise UnsafeContent("the file is a Python pickle; pickles are never loaded (save TorchScript, .pt2 or ONNX)")
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return _detect_zip(path)
    if head[:2] == GZIP_MAGIC or (len(head) >= 262 and head[257:262] == b"ustar"):
        return _detect_tar(path)
    if _looks_like_onnx(path, size):
        return "onnx"
    raise UnsupportedFormat("not a model format DeepOpt reads (ONNX, TorchScript, .pt2, Hugging Face .zip/.tar.gz)")


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("truncated varint")


def _looks_like_onnx(path: Path, size: int) -> bool:
    """Walk the top-level protobuf fields: all must be ModelProto fields of the right wire type.

    Stops at the graph field (its length is checked against the file size) so that a multi-GB model is not read.
    A file that starts like a ModelProto but whose graph runs past the end is a truncated ONNX file.
    """
    with open(path, "rb") as handle:
        data = handle.read(min(size, 1 << 20))
    pos = 0
    started = False
    while pos < len(data):
        try:
            key, pos = _read_varint(data, pos)
        except ValueError:
            return _truncated(started)
        number, wire = key >> 3, key & 7
        if _MODEL_PROTO_FIELDS.get(number) != wire:
            return False if not started else _truncated(True)
        try:
            if wire == 0:
                _, pos = _read_varint(data, pos)
            else:
                length, pos = _read_varint(data, pos)
                if number == 7:
                    if pos + length > size:
                        raise InvalidModel("the ONNX file is truncated (its graph runs past the end of the file)")
                    return True
                pos += length
        except ValueError:
            return _truncated(started)
        started = started or number == 1
    return False  # no graph field: not a model


def _truncated(started: bool) -> bool:
    if started:
        raise InvalidModel("the ONNX file is truncated or corrupt")
    return False


# --------------------------------------------------------------------------------------------------------------
# Archives (member safety checks and extraction: deepopt_core.formats.archives)
# --------------------------------------------------------------------------------------------------------------


def _root_of(names: list[str], marker: str) -> str | None:
    """The folder prefix ('' or 'x/') under which `marker` sits, at most one folder deep."""
    for name in names:
        parts = name.split("/")
        if parts[-1] == marker and len(parts) <= 2:
            return "/".join(parts[:-1]) + "/" if len(parts) == 2 else ""
    return None


def _classify_names(names: list[str]) -> ModelFormat:
    files = set(names)
    tops = {name.split("/")[0] for name in names if "/" in name}
    for top in sorted(tops):
        if f"{top}/constants.pkl" in files and any(n.startswith(f"{top}/code/") for n in files):
            return "torchscript"
        if f"{top}/archive_format" in files and any(
            n.startswith(f"{top}/models/") and n.endswith(".json") for n in files
        ):
            return "torch_export"
    hf_root = _root_of(names, "config.json")
    if hf_root is not None:
        weights = [n for n in names if n.startswith(hf_root) and "/" not in n[len(hf_root):]]
        if any(n.endswith(".safetensors") for n in weights):
            return "hf"
        if pickle_files(weights):
            raise UnsafeContent("the Hugging Face folder has only pickled weights; save them as .safetensors")
    for top in sorted(tops) + [""]:
        prefix = f"{top}/" if top else ""
        if f"{prefix}data.pkl" in files:
            raise UnsafeContent("the file is a torch.save checkpoint (a pickle); save TorchScript, .pt2 or ONNX")
    raise UnsupportedFormat("the archive holds no model DeepOpt reads (TorchScript, .pt2, Hugging Face folder)")


def _detect_zip(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            members = zip_members(archive)
            names = check_members(members, path.stat().st_size)
            check_no_native_code(names)
            raw_names = [m.name for m in members]
            if is_torch_archive(names):
                # Before classifying: normalised names are not what torch's reader resolves (see torch_archive).
                canonical_top(raw_names)
            fmt = _classify_names([n for n, m in zip(names, members, strict=True) if m.is_file])
            if fmt in ("torchscript", "torch_export"):
                review_torch_archive(fmt, raw_names, archive.read)
            elif fmt == "hf":
                files = [m.name for m in members if m.is_file]
                review_hf(files, _bounded_reader(lambda name: archive.getinfo(name).file_size, archive.read))
            return fmt
    except zipfile.BadZipFile as exc:
        raise InvalidModel(f"the zip archive is truncated or corrupt: {exc}") from None


def _bounded_reader(size_of: Callable[[str], int], read: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """A reader of the Hugging Face configs that refuses, from its declared size, a member too large to review."""

    def bounded(name: str) -> bytes:
        if size_of(name) > CONFIG_LIMIT:
            raise InvalidModel(f"{name} is larger than {CONFIG_LIMIT} bytes")
        return read(name)

    return bounded


def _detect_tar(path: Path) -> ModelFormat:
    members = tar_members(path)
    names = check_members(members, path.stat().st_size)
    check_no_native_code(names)
    files = [n for n, m in zip(names, members, strict=True) if m.is_file]
    fmt = _classify_names(files)
    if fmt != "hf":
        raise UnsupportedFormat("only Hugging Face folders are read from .tar.gz archives")
    configs = _read_tar_configs(path)
    review_hf(files, lambda name: configs[name])
    return fmt


def _read_tar_configs(path: Path) -> dict[str, bytes]:
    """The reviewed JSON configs of a tar archive (one more streaming pass), by normalised name."""
    configs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as archive:
            for info in archive:
                name = check_member_name(info.name)
                if info.isfile() and is_reviewed_config(name):
                    if info.size > CONFIG_LIMIT:
                        raise InvalidModel(f"{name} is larger than {CONFIG_LIMIT} bytes")
                    stream = archive.extractfile(info)
                    configs[name] = stream.read() if stream is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidModel(f"the tar archive is truncated or corrupt: {exc}") from None
    return configs
