"""Archive safety: member checks (names, types, declared sizes) and streaming, bounded extraction.

Standard library only. Used by format detection (which lists members without extracting) and by everything
that unpacks an upload (Hugging Face archives).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deepopt_core.errors import InvalidModel, UnsafeContent, UnsupportedFormat

MAX_EXPANDED_BYTES = 16 * 1024**3
"""Default cap on the total unpacked size of an archive."""
MAX_RATIO = 100.0
"""Default cap on the unpacked/packed size ratio of an archive and of each large member."""
_RATIO_FLOOR = 1024 * 1024  # members (and archives) smaller than this may compress as well as they like
MAX_MEMBERS = 100_000
NATIVE_SUFFIXES = (".so", ".cpp", ".wrapper", ".h", ".hpp", ".o", ".cubin", ".ptx", ".hsaco", ".dll", ".dylib",
                   ".pyd")
"""Suffixes of native code and its sources (AOTInductor packages, compiled extensions): no model upload has them."""
_CHUNK = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Member:
    """One archive entry, as far as safety checks need it."""

    name: str
    size: int
    packed_size: int
    is_dir: bool = False
    is_file: bool = True


def zip_members(archive: zipfile.ZipFile) -> list[Member]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeContent(f"the archive has more than {MAX_MEMBERS} members")
    members = []
    for info in infos:
        mode = info.external_attr >> 16
        if mode and (stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)
                     or stat.S_ISSOCK(mode)):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a device or special file"
            raise UnsafeContent(f"archive member {info.filename!r} is {kind}")
        # orig_filename: zipfile cuts `filename` at a NUL, which would hide it from the name checks.
        members.append(Member(info.orig_filename, info.file_size, info.compress_size, is_dir=info.is_dir(),
                              is_file=not info.is_dir()))
    return members


def check_member_name(name: str) -> str:
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
        UnsafeContent: an escaping or duplicated name, or declared sizes beyond the limits (an archive bomb).
    """
    names = [check_member_name(m.name) for m in members]
    check_no_duplicates(names)
    total = sum(m.size for m in members)
    if total > max_total_bytes:
        raise UnsafeContent(f"the archive unpacks to {total} bytes, more than the limit of {max_total_bytes}")
    for member in members:
        if member.size > _RATIO_FLOOR and member.size > max_ratio * max(member.packed_size, 1):
            raise UnsafeContent(f"archive member {member.name!r} expands more than {max_ratio:.0f}x (archive bomb)")
    if total > _RATIO_FLOOR and total > max_ratio * max(archive_size, 1):
        raise UnsafeContent(f"the archive expands more than {max_ratio:.0f}x (archive bomb)")
    return names


def check_no_duplicates(names: list[str]) -> None:
    """Refuse two members with the same (normalised) name: readers disagree on which copy wins.

    zipfile's ``namelist`` keeps both, ``ZipFile.read`` takes the last, miniz (torch's reader) the first, and an
    extraction the first or the last: a check of one copy would say nothing about the copy that is loaded.
    """
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise UnsafeContent(f"ambiguous member names: {name!r} occurs more than once in the archive")
        seen.add(name)


def check_no_native_code(names: list[str]) -> None:
    """Refuse members that are native libraries or their sources (an AOTInductor package dlopens its .so)."""
    for name in names:
        if name.lower().endswith(NATIVE_SUFFIXES):
            raise UnsafeContent(f"the archive holds native code ({name}); models with compiled code are never loaded")


def tar_members(path: Path) -> list[Member]:
    members: list[Member] = []
    try:
        with tarfile.open(path, "r|*") as archive:
            for info in archive:
                if len(members) >= MAX_MEMBERS:
                    raise UnsafeContent(f"the archive has more than {MAX_MEMBERS} members")
                check_tar_type(info)
                members.append(Member(info.name, info.size if info.isfile() else 0, 0, is_dir=info.isdir(),
                                      is_file=info.isfile()))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidModel(f"the tar archive is truncated or corrupt: {exc}") from None
    return members


def check_tar_type(info: tarfile.TarInfo) -> None:
    if info.issym() or info.islnk():
        raise UnsafeContent(f"archive member {info.name!r} is a link")
    if not (info.isfile() or info.isdir()):
        raise UnsafeContent(f"archive member {info.name!r} is a device or special file")


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
        elif magic[:2] == GZIP_MAGIC or magic[257:262] == b"ustar":
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
    rel = check_member_name(name)
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
            members = zip_members(zf)
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
                if count > MAX_MEMBERS:
                    raise UnsafeContent(f"the archive has more than {MAX_MEMBERS} members")
                check_tar_type(info)
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
