"""Object storage through fsspec/s3fs against a local S3-compatible server (moto's server mode): files stream in
and out in bounded parts, never whole; ranges, dedup, local copies for workers, and the API on top of it."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.storage import PART_BYTES, FsspecStorage, make_storage
from tests.conftest import S3_ENV, S3Server

SIZE = 48 * 1024 * 1024
# An upload holds two 5 MiB parts (and botocore's copies of them), a download one 4 MiB read: ~21 and ~12 MiB
# measured, whatever the file's size (the same for 24 and 96 MiB).
PEAK_LIMIT = 24 * 1024 * 1024


@pytest.fixture
def s3_storage(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FsspecStorage:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket()
    return FsspecStorage(f"s3://{bucket}/blobs", tmp_path / "tmp",
                         {"client_kwargs": {"endpoint_url": s3_server.endpoint}})


def _chunks(total: int, seed: int = 7) -> Iterator[bytes]:
    block = hashlib.sha256(str(seed).encode()).digest() * (64 * 1024 // 32)  # 64 KiB, not compressible to nothing
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        sent += len(piece)
        yield piece


def test_upload_and_download_stream_in_bounded_memory(s3_storage: FsspecStorage, tmp_path: Path) -> None:
    expected = hashlib.sha256()
    for piece in _chunks(SIZE):
        expected.update(piece)

    assert s3_storage.writable()  # the S3 client's one-time set-up (service models) before measuring
    tracemalloc.start()
    try:
        incoming = s3_storage.incoming(limit=SIZE)
        for piece in _chunks(SIZE):
            incoming.write(piece)
        stored = incoming.commit()
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        downloaded = hashlib.sha256()
        total = 0
        for chunk in s3_storage.iter_range(stored.key):
            downloaded.update(chunk)
            total += len(chunk)
        _, download_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        local = s3_storage.fetch(stored.key, tmp_path / "work" / "model.bin")
        _, fetch_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert stored.sha256 == expected.hexdigest() and stored.size_bytes == SIZE
    assert not incoming.path.exists()  # the local temp file is gone once the object is stored
    assert downloaded.hexdigest() == expected.hexdigest() and total == SIZE
    assert local.stat().st_size == SIZE
    for name, peak in (("upload", upload_peak), ("download", download_peak), ("fetch", fetch_peak)):
        assert peak < PEAK_LIMIT, f"{name} held {peak / 2**20:.1f} MiB for a {SIZE / 2**20:.0f} MiB file"
    # It really went to the object store, in parts, under its sha256.
    fs = s3_storage.fs
    remote = f"{s3_storage.root}/{stored.key[:2]}/{stored.key}"
    assert fs.info(remote)["size"] == SIZE
    assert SIZE > 2 * PART_BYTES


def test_ranges_dedup_and_probe(s3_storage: FsspecStorage, tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    source.write_bytes(data)
    first = s3_storage.put_file(source)
    again = s3_storage.put_file(source)  # the same content is stored once
    assert first == again and s3_storage.exists(first.key)
    assert b"".join(s3_storage.iter_range(first.key, 10, 19)) == data[10:20]
    assert b"".join(s3_storage.iter_range(first.key, len(data) - 5)) == data[-5:]
    assert s3_storage.read_bytes(first.key, 100) == data[:100]
    assert not s3_storage.exists("0" * 64)
    with pytest.raises(ValueError):
        s3_storage.exists("../../etc/passwd")
    assert s3_storage.writable()


def test_settings_select_the_store(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.config import Settings

    local = make_storage(Settings(data_dir=tmp_path))
    assert type(local).__name__ == "LocalStorage"
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket()
    remote = make_storage(Settings(data_dir=tmp_path, storage_url=f"s3://{bucket}/p",
                                   s3_endpoint_url=s3_server.endpoint))
    assert isinstance(remote, FsspecStorage) and remote.writable()


def test_api_on_s3_uploads_serves_ranges_and_reports(client: httpx.Client, s3_server: S3Server, tiny_onnx: Path,
                                                     monkeypatch: pytest.MonkeyPatch, app_env: Path) -> None:
    """The in-process API with DEEPOPT_STORAGE_URL=s3://...: an upload lands in the bucket (nothing under the data
    dir's blobs), and downloads with ranges come back from it."""
    from app.api.deps import get_storage
    from app.core.config import get_settings

    bucket = s3_server.make_bucket()
    for name, value in {**s3_server.env(bucket)}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    get_storage.cache_clear()
    data = tiny_onnx.read_bytes()
    model = client.post("/v1/models", files={"file": ("tiny.onnx", data)}).json()
    key = model["sha256"]
    fs = s3_server.filesystem()
    assert fs.cat_file(f"{bucket}/blobs/{key[:2]}/{key}") == data  # type: ignore[attr-defined]
    assert not list((app_env / "blobs").glob("??/*"))
    whole = client.get(f"/v1/models/{model['id']}/content")
    assert whole.status_code == 200 and whole.content == data
    part = client.get(f"/v1/models/{model['id']}/content", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == data[4:12]
    assert client.get("/readyz").json()["checks"]["storage"] is True
