"""Content-addressed local file storage: files are written to a temp name, fsynced, and renamed to their sha256.

Keys are derived from content hashes only, never from user input, so no request can name a path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


class TooLarge(Exception):
    """The stream went past the byte limit; nothing was kept."""


@dataclass(frozen=True)
class StoredFile:
    key: str
    sha256: str
    size_bytes: int


class IncomingFile:
    """A file being received: written to a temp file and hashed as the bytes arrive, capped at `limit`."""

    def __init__(self, storage: LocalStorage, limit: int):
        self._storage = storage
        self._limit = limit
        self._hash = hashlib.sha256()
        self.size_bytes = 0
        fd, name = tempfile.mkstemp(dir=storage.tmp_dir, prefix="in-")
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self.size_bytes > self._limit:
            raise TooLarge(f"more than {self._limit} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> None:
        """Flush and fsync; the temp file stays readable at `path` until `commit` or `discard`."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> StoredFile:
        if not self._file.closed:
            self.finish()
        return self._storage._adopt(self.path, self.sha256, self.size_bytes)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class LocalStorage:
    """Blobs under `root/ab/abcdef...`; identical content is stored once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def incoming(self, limit: int) -> IncomingFile:
        return IncomingFile(self, limit)

    def put_file(self, source: Path) -> StoredFile:
        """Copy a local file in (hashing while copying)."""
        incoming = self.incoming(limit=2**63)
        try:
            with open(source, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    incoming.write(chunk)
            return incoming.commit()
        except BaseException:
            incoming.discard()
            raise

    def path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError("invalid storage key")
        return self.root / key[:2] / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, end] (inclusive end, as in HTTP ranges)."""
        with open(self.path(key), "rb") as handle:
            handle.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def writable(self) -> bool:
        try:
            with tempfile.NamedTemporaryFile(dir=self.tmp_dir):
                return True
        except OSError:
            return False

    def _adopt(self, temp_path: Path, sha256: str, size: int) -> StoredFile:
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            temp_path.unlink(missing_ok=True)
        else:
            # Read-only: workers hard-link blobs into their workdirs, and nothing may change a blob in place.
            os.chmod(temp_path, 0o444)
            os.replace(temp_path, final)
            _fsync_dir(final.parent)
        return StoredFile(key=sha256, sha256=sha256, size_bytes=size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_to(storage: LocalStorage, key: str, destination: Path) -> Path:
    """Materialise a blob at `destination` (a hard link when possible, else a copy)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    source = storage.path(key)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
    return destination
