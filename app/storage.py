"""Content-addressed file storage: local files, or any fsspec URL (S3 via s3fs) shared by every API replica and
worker. Files are hashed while they arrive and stored under their sha256.

Keys are derived from content hashes only, never from user input, so no request can name a path.

- `LocalStorage`: blobs under a folder; written to a temp name, fsynced, renamed.
- `FsspecStorage` (`DEEPOPT_STORAGE_URL=s3://bucket/prefix`): an upload is received into a local temp file
  (inspection needs a file), then streamed to the object store in parts; downloads stream back in chunks, with
  ranges. Memory stays bounded by a few parts whatever the file's size. A PUT (or a completed multipart upload)
  appears whole or not at all, so no reader sees half a blob.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

CHUNK = 1024 * 1024
# Object-store parts: the S3 minimum, two in flight at most (so an upload holds at most ~10 MiB in memory).
PART_BYTES = 5 * 1024 * 1024
PART_CONCURRENCY = 2
READ_CHUNK = 4 * 1024 * 1024


class TooLarge(Exception):
    """The stream went past the byte limit; nothing was kept."""


@dataclass(frozen=True)
class StoredFile:
    key: str
    sha256: str
    size_bytes: int


def check_key(key: str) -> str:
    if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        raise ValueError("invalid storage key")
    return key


class Storage(Protocol):
    """What the API and the workers need of a file store."""

    tmp_dir: Path

    def incoming(self, limit: int) -> IncomingFile: ...

    def put_file(self, source: Path) -> StoredFile: ...

    def exists(self, key: str) -> bool: ...

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...

    def read_bytes(self, key: str, limit: int) -> bytes: ...

    def fetch(self, key: str, destination: Path) -> Path: ...

    def writable(self) -> bool: ...

    def adopt(self, temp_path: Path, sha256: str, size: int) -> StoredFile: ...


class IncomingFile:
    """A file being received: written to a local temp file and hashed as the bytes arrive, capped at `limit`."""

    def __init__(self, storage: Storage, limit: int):
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
        """Keep the file in the store (blocking: an object store upload; run it off the event loop)."""
        if not self._file.closed:
            self.finish()
        return self._storage.adopt(self.path, self.sha256, self.size_bytes)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class LocalStorage:
    """Blobs under `root/ab/abcdef...`; identical content is stored once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

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
        return self.root / check_key(key)[:2] / key

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

    def read_bytes(self, key: str, limit: int) -> bytes:
        with open(self.path(key), "rb") as handle:
            return handle.read(limit)

    def fetch(self, key: str, destination: Path) -> Path:
        """Materialise a blob at `destination` (a hard link when possible, else a copy)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        source = self.path(key)
        try:
            os.link(source, destination)
        except OSError:
            shutil.copyfile(source, destination)
        return destination

    def writable(self) -> bool:
        try:
            with tempfile.NamedTemporaryFile(dir=self.tmp_dir):
                return True
        except OSError:
            return False

    def adopt(self, temp_path: Path, sha256: str, size: int) -> StoredFile:
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

    _adopt = adopt  # the name before the Storage protocol


class FsspecStorage:
    """Blobs at `URL/ab/abcdef...` on any fsspec filesystem (S3 through s3fs, GCS, ...). Uploads arrive in a
    local temp folder first (`tmp_dir`: the upload is inspected there), then stream to the store in parts."""

    def __init__(self, url: str, tmp_dir: Path, options: dict[str, Any] | None = None):
        import fsspec

        options = dict(options or {})
        options.setdefault("skip_instance_cache", True)
        if url.startswith(("s3://", "s3a://")):
            options.setdefault("use_listings_cache", False)
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        self.root = root.rstrip("/")
        self.tmp_dir = Path(tmp_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"

    def _remote(self, key: str) -> str:
        return f"{self.root}/{check_key(key)[:2]}/{key}"

    def incoming(self, limit: int) -> IncomingFile:
        return IncomingFile(self, limit)

    def put_file(self, source: Path) -> StoredFile:
        sha256, size = _hash_file(source)
        self._upload(source, sha256)
        return StoredFile(key=sha256, sha256=sha256, size_bytes=size)

    def adopt(self, temp_path: Path, sha256: str, size: int) -> StoredFile:
        try:
            self._upload(temp_path, sha256)
        finally:
            temp_path.unlink(missing_ok=True)
        return StoredFile(key=sha256, sha256=sha256, size_bytes=size)

    def _upload(self, source: Path, sha256: str) -> None:
        remote = self._remote(sha256)
        if self.fs.exists(remote):
            return  # identical content is stored once
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        if "s3" in protocols:
            self.fs.put_file(str(source), remote, chunksize=PART_BYTES, max_concurrency=PART_CONCURRENCY)
        else:
            self.fs.makedirs(self.fs._parent(remote), exist_ok=True)
            self.fs.put_file(str(source), remote)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._remote(key)))

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, end] (inclusive end), one ranged read of at most READ_CHUNK at a time."""
        with self.fs.open(self._remote(key), "rb", block_size=READ_CHUNK, cache_type="none") as handle:
            handle.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                chunk = handle.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def read_bytes(self, key: str, limit: int) -> bytes:
        with self.fs.open(self._remote(key), "rb", block_size=READ_CHUNK, cache_type="none") as handle:
            return bytes(handle.read(limit))

    def fetch(self, key: str, destination: Path) -> Path:
        """Download a blob to a local file (workers run models from local files), streamed to a temp name."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        self.fs.get_file(self._remote(key), str(partial))
        os.replace(partial, destination)
        return destination

    def writable(self) -> bool:
        probe = f"{self.root}/.probe/{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
            return True
        except Exception:
            return False


def make_storage(settings: Any) -> Storage:
    """The store the settings name: `storage_url` (fsspec) or the local `storage_dir`."""
    if not settings.storage_url:
        return LocalStorage(settings.storage_dir)
    options: dict[str, Any] = json.loads(settings.storage_options) if settings.storage_options else {}
    if settings.s3_endpoint_url and settings.storage_url.startswith(("s3://", "s3a://")):
        options.setdefault("client_kwargs", {}).setdefault("endpoint_url", settings.s3_endpoint_url)
    return FsspecStorage(settings.storage_url, settings.data_dir / "tmp", options)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_to(storage: Storage, key: str, destination: Path) -> Path:
    """Materialise a blob at `destination` (a local file the caller may read)."""
    return storage.fetch(key, destination)
