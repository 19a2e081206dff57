"""Recognise a model file from its bytes, never its name, and unpack archives safely.

Light on purpose (standard library only): the API calls it. Pickles are never loaded: a raw pickle, a
``torch.save`` zip (``data.pkl`` without TorchScript ``code/``), a Hugging Face folder with only pickled weights,
or a .pt2 archive whose payloads are pickled are all rejected with :class:`UnsafeContent`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deepopt_core.errors import InvalidModel, UnsafeContent, UnsupportedFormat
from deepopt_core.specs import ModelFormat

log = logging.getLogger("deepopt.formats")

MAX_EXPANDED_BYTES = 16 * 1024**3
"""Default cap on the total unpacked size of an archive."""
MAX_RATIO = 100.0
"""Default cap on the unpacked/packed size ratio of an archive and of each large member."""
_RATIO_FLOOR = 1024 * 1024  # members (and archives) smaller than this may compress as well as they like
_MAX_MEMBERS = 100_000
_CHUNK = 1024 * 1024

# ModelProto fields (number -> wire type): ir_version, producer_name, producer_version, domain, model_version,
# doc_string, graph, opset_import, metadata_props, training_info, functions, configuration.
_MODEL_PROTO_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Member:
    """One archive entry, as far as safety checks need it."""

    name: str
    size: int
    packed_size: int
    is_dir: bool = False
    is_file: bool = True


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
    if head[:2] == _GZIP_MAGIC or (len(head) >= 262 and head[257:262] == b"ustar"):
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
# Archives
# --------------------------------------------------------------------------------------------------------------


def _zip_members(archive: zipfile.ZipFile) -> list[Member]:
    infos = archive.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise UnsafeContent(f"the archive has more than {_MAX_MEMBERS} members")
    members = []
    for info in infos:
        mode = info.external_attr >> 16
        if mode and (stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)
                     or stat.S_ISSOCK(mode)):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a device or special file"
            raise UnsafeContent(f"archive member {info.filename!r} is {kind}")
        members.append(Member(info.filename, info.file_size, info.compress_size, is_dir=info.is_dir(),
                              is_file=not info.is_dir()))
    return members


def _check_member_name(name: str) -> str:
    """Return the normalised relative POSIX name, or raise UnsafeContent for anything that could escape."""
    if "\x00" in name or "\\" in name:
        raise UnsafeContent(f"archive member {name!r} has a backslash or NUL in its name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeContent(f"archive member {name!r} has an absolute path")
    if any(part == ".." for part in pure.parts):
        raise UnsafeContent(f"archive member {name!r} escapes the archive ('..')")
    return "/".join(part for part in pure.parts if part not in ("", "."))


def check_members(members: list[Member], archive_size: int, *, max_total_bytes: int = MAX_EXPANDED_BYTES,
                  max_ratio: float = MAX_RATIO) -> list[str]:
    """Check names and declared sizes of archive members; return the normalised names.

    Raises:
        UnsafeContent: an escaping name, or declared sizes beyond the limits (an archive bomb).
    """
    names = [_check_member_name(m.name) for m in members]
    total = sum(m.size for m in members)
    if total > max_total_bytes:
        raise UnsafeContent(f"the archive unpacks to {total} bytes, more than the limit of {max_total_bytes}")
    for member in members:
        if member.size > _RATIO_FLOOR and member.size > max_ratio * max(member.packed_size, 1):
            raise UnsafeContent(f"archive member {member.name!r} expands more than {max_ratio:.0f}x (archive bomb)")
    if total > _RATIO_FLOOR and total > max_ratio * max(archive_size, 1):
        raise UnsafeContent(f"the archive expands more than {max_ratio:.0f}x (archive bomb)")
    return names


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
        if any(n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for n in weights):
            raise UnsafeContent("the Hugging Face folder has only pickled weights; save them as .safetensors")
    for top in sorted(tops) + [""]:
        prefix = f"{top}/" if top else ""
        if f"{prefix}data.pkl" in files:
            raise UnsafeContent("the file is a torch.save checkpoint (a pickle); save TorchScript, .pt2 or ONNX")
    raise UnsupportedFormat("the archive holds no model DeepOpt reads (TorchScript, .pt2, Hugging Face folder)")


def _detect_zip(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            members = _zip_members(archive)
            names = check_members(members, path.stat().st_size)
            fmt = _classify_names(names)
            if fmt == "torch_export":
                check_pt2_payloads(archive, names)
            return fmt
    except zipfile.BadZipFile as exc:
        raise InvalidModel(f"the zip archive is truncated or corrupt: {exc}") from None


def check_pt2_payloads(archive: zipfile.ZipFile, names: list[str]) -> None:
    """Reject .pt2 archives whose weights or constants would be unpickled by ``torch.export.load``."""
    top = names[0].split("/")[0]
    for name in names:
        rel = name[len(top) + 1:]
        if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(".pt"):
            raise UnsafeContent(f"the .pt2 archive stores pickled payloads ({rel}); re-save it with torch.export.save")
        if rel.startswith("data/constants/") and rel.split("/")[-1].startswith(("custom_obj", "opaque_obj")):
            raise UnsafeContent(f"the .pt2 archive holds pickled custom objects ({rel})")
        if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith("_config.json"):
            try:
                config = json.loads(archive.read(name).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise InvalidModel(f"the .pt2 archive has an unreadable {rel}") from None
            entries = config.get("config", {}) if isinstance(config, dict) else {}
            if any(isinstance(v, dict) and v.get("use_pickle") for v in entries.values()):
                raise UnsafeContent("the .pt2 archive stores pickled weights or constants; pickles are never loaded")


def _tar_members(path: Path) -> list[Member]:
    members = []
    try:
        with tarfile.open(path, "r|*") as archive:
            for info in archive:
                if len(members) >= _MAX_MEMBERS:
                    raise UnsafeContent(f"the archive has more than {_MAX_MEMBERS} members")
                _check_tar_type(info)
                members.append(Member(info.name, info.size if info.isfile() else 0, 0, is_dir=info.isdir(),
                                      is_file=info.isfile()))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidModel(f"the tar archive is truncated or corrupt: {exc}") from None
    return members


def _check_tar_type(info: tarfile.TarInfo) -> None:
    if info.issym() or info.islnk():
        raise UnsafeContent(f"archive member {info.name!r} is a link")
    if not (info.isfile() or info.isdir()):
        raise UnsafeContent(f"archive member {info.name!r} is a device or special file")


def _detect_tar(path: Path) -> ModelFormat:
    members = _tar_members(path)
    names = check_members(members, path.stat().st_size)
    fmt = _classify_names([n for n, m in zip(names, members, strict=True) if m.is_file])
    if fmt != "hf":
        raise UnsupportedFormat("only Hugging Face folders are read from .tar.gz archives")
    return fmt


def hf_root_in(names: list[str]) -> str:
    """The folder prefix of the Hugging Face model in an archive's member names ('' or 'top/')."""
    root = _root_of(names, "config.json")
    if root is None:
        raise InvalidModel("the archive has no config.json")
    return root


def safe_extract(archive: str | Path, dest: str | Path, max_total_bytes: int = MAX_EXPANDED_BYTES,
                 max_ratio: float = MAX_RATIO) -> Path:
    """Extract a .zip or .tar(.gz) archive into `dest`, streaming, refusing anything unsafe.

    Refuses members with ``..`` or absolute names, symbolic and hard links, device files, and archives that
    expand beyond `max_total_bytes` or by more than `max_ratio` (checked on declared sizes first, then on the
    bytes actually written). On refusal whatever was written is removed.

    Args:
        archive: the archive file.
        dest: folder to extract into (created; should be empty).
        max_total_bytes: cap on the total size of the extracted files.
        max_ratio: cap on the extracted/archive size ratio (and per member, for members over 1 MiB).

    Returns:
        `dest`.

    Raises:
        UnsafeContent: see above.
        InvalidModel: a corrupt archive.
        UnsupportedFormat: not a zip or tar archive.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(max_total_bytes, max_ratio, archive.stat().st_size)
    try:
        with open(archive, "rb") as handle:
            magic = handle.read(512)
        if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            _extract_zip(archive, dest, budget)
        elif magic[:2] == _GZIP_MAGIC or magic[257:262] == b"ustar":
            _extract_tar(archive, dest, budget)
        else:
            raise UnsupportedFormat("not a zip or tar archive")
    except BaseException:
        for child in dest.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise
    return dest


@dataclass
class _Budget:
    max_total: int
    max_ratio: float
    archive_size: int
    written: int = 0

    def take(self, n: int, member: str, member_written: int, packed: int | None) -> None:
        self.written += n
        if self.written > self.max_total:
            raise UnsafeContent(f"the archive unpacks to more than {self.max_total} bytes")
        if packed is not None and member_written > _RATIO_FLOOR and member_written > self.max_ratio * max(packed, 1):
            raise UnsafeContent(f"archive member {member!r} expands more than {self.max_ratio:.0f}x (archive bomb)")
        if self.written > _RATIO_FLOOR and self.written > self.max_ratio * max(self.archive_size, 1):
            raise UnsafeContent(f"the archive expands more than {self.max_ratio:.0f}x (archive bomb)")


def _target(dest: Path, name: str) -> Path | None:
    rel = _check_member_name(name)
    if not rel:
        return None
    target = (dest / rel).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UnsafeContent(f"archive member {name!r} escapes the archive")
    return target


def _copy(source: object, target: Path, budget: _Budget, name: str, packed: int | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "xb") as out:
        while chunk := source.read(_CHUNK):  # type: ignore[attr-defined]
            written += len(chunk)
            budget.take(len(chunk), name, written, packed)
            out.write(chunk)
    os.chmod(target, 0o644)


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _zip_members(zf)
            check_members(members, budget.archive_size, max_total_bytes=budget.max_total, max_ratio=budget.max_ratio)
            for info in zf.infolist():
                target = _target(dest, info.filename)
                if target is None:
                    continue
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                with zf.open(info) as source:
                    _copy(source, target, budget, info.filename, info.compress_size)
    except zipfile.BadZipFile as exc:
        raise InvalidModel(f"the zip archive is truncated or corrupt: {exc}") from None


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(archive, "r|*") as tf:
            count = 0
            for info in tf:
                count += 1
                if count > _MAX_MEMBERS:
                    raise UnsafeContent(f"the archive has more than {_MAX_MEMBERS} members")
                _check_tar_type(info)
                target = _target(dest, info.name)
                if target is None:
                    continue
                if info.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if info.size > budget.max_total:
                    raise UnsafeContent(f"archive member {info.name!r} is larger than {budget.max_total} bytes")
                source = tf.extractfile(info)
                if source is None:
                    raise UnsafeContent(f"archive member {info.name!r} is not a regular file")
                _copy(source, target, budget, info.name, None)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidModel(f"the tar archive is truncated or corrupt: {exc}") from None
