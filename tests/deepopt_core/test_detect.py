"""Format detection from bytes, refusal of unsafe content, and safe archive extraction."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deepopt_core.errors import InvalidModel, UnsafeContent, UnsupportedFormat
from deepopt_core.formats.detect import detect_format, safe_extract
from tests.fixtures.models import (
    write_pickle,
    write_tar_with_symlink,
    write_torch_save_zip,
    write_zip_bomb,
    write_zip_with_member,
    write_zip_with_symlink,
)


@pytest.mark.parametrize(("key", "expected"), [("onnx", "onnx"), ("torchscript", "torchscript"),
                                               ("torch_export", "torch_export")])
def test_detects_each_format_from_bytes_not_name(digits, copy_of, key, expected):
    misnamed = copy_of(digits[key], "upload.bin")
    assert detect_format(misnamed) == expected


def test_detects_hugging_face_zip_and_tar(tiny_bert_zip, tiny_bert_tar, copy_of):
    assert detect_format(copy_of(tiny_bert_zip, "model.hf")) == "hf"
    assert detect_format(tiny_bert_tar) == "hf"


def test_detects_unpacked_hugging_face_folder(tiny_bert_zip, tmp_path):
    folder = tmp_path / "x"
    safe_extract(tiny_bert_zip, folder)
    assert detect_format(folder / "tiny-bert") == "hf"


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", bytes(range(256)) * 4, b"\x00" * 64])
def test_garbage_and_empty_are_unsupported(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(UnsupportedFormat) as info:
        detect_format(path)
    assert info.value.status == 415


def test_raw_pickle_is_unsafe(tmp_path):
    with pytest.raises(UnsafeContent) as info:
        detect_format(write_pickle(tmp_path / "model.onnx"))
    assert info.value.status == 422 and "pickle" in info.value.message


def test_torch_save_zip_is_unsafe(tmp_path):
    with pytest.raises(UnsafeContent, match="torch.save"):
        detect_format(write_torch_save_zip(tmp_path / "model.pt"))


def test_zip_of_something_else_is_unsupported(tmp_path):
    path = tmp_path / "doc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(UnsupportedFormat):
        detect_format(path)


def test_hf_folder_with_pickled_weights_only_is_unsafe(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/config.json", "{}")
        zf.writestr("m/pytorch_model.bin", b"\x80\x04junk")
    with pytest.raises(UnsafeContent, match="safetensors"):
        detect_format(path)


@pytest.mark.parametrize("member", ["../evil.txt", "m/../../evil.txt", "/etc/evil", "C:/evil.txt"])
def test_escaping_members_are_unsafe(tmp_path, member):
    with pytest.raises(UnsafeContent):
        detect_format(write_zip_with_member(tmp_path / "m.zip", member))


def test_symlink_members_are_unsafe(tmp_path):
    with pytest.raises(UnsafeContent, match="link"):
        detect_format(write_zip_with_symlink(tmp_path / "m.zip"))
    with pytest.raises(UnsafeContent, match="link"):
        detect_format(write_tar_with_symlink(tmp_path / "m.tar.gz"))


def test_zip_bomb_is_unsafe(tmp_path):
    bomb = write_zip_bomb(tmp_path / "bomb.zip", expanded_mb=32)
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(UnsafeContent, match="bomb"):
        detect_format(bomb)
    with pytest.raises(UnsafeContent):
        safe_extract(bomb, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_truncated_onnx_is_invalid(digits, tmp_path):
    data = digits["onnx"].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel, match="truncated"):
        detect_format(path)


def test_truncated_zip_is_invalid(digits, tmp_path):
    data = digits["torchscript"].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel):
        detect_format(path)


def test_pt2_with_pickled_weights_is_unsafe(digits, tmp_path):
    source = zipfile.ZipFile(digits["torch_export"])
    path = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            out.writestr(info.filename, data)
    with pytest.raises(UnsafeContent, match="pickle"):
        detect_format(path)


def test_safe_extract_unpacks_and_respects_limits(tiny_bert_zip, tiny_bert_tar, tmp_path):
    out = safe_extract(tiny_bert_zip, tmp_path / "zip")
    assert (out / "tiny-bert" / "config.json").is_file()
    out = safe_extract(tiny_bert_tar, tmp_path / "tar")
    assert (out / "tiny-bert" / "model.safetensors").is_file()
    with pytest.raises(UnsafeContent, match="more than"):
        safe_extract(tiny_bert_zip, tmp_path / "small", max_total_bytes=10_000)
    assert not any((tmp_path / "small").iterdir())


def test_safe_extract_refuses_traversal_and_links(tmp_path):
    with pytest.raises(UnsafeContent):
        safe_extract(write_zip_with_member(tmp_path / "a.zip", "../escape.txt"), tmp_path / "a")
    with pytest.raises(UnsafeContent):
        safe_extract(write_zip_with_symlink(tmp_path / "b.zip"), tmp_path / "b")
    with pytest.raises(UnsafeContent):
        safe_extract(write_tar_with_symlink(tmp_path / "c.tar.gz"), tmp_path / "c")
    assert not (tmp_path / "escape.txt").exists()


LIGHT_MODULES = [
    "deepopt_core.specs", "deepopt_core.registry", "deepopt_core.planning", "deepopt_core.result",
    "deepopt_core.errors", "deepopt_core.passes.quantize.config", "deepopt_core.passes.prune.config",
    "deepopt_core.passes.export.config", "deepopt_core.formats.detect", "deepopt_core.datasets",
    "deepopt_core.formats.onnx_inspect", "deepopt_core.formats", "deepopt_core.passes.context",
    "deepopt_core.formats.archives", "deepopt_core.formats.hf_inspect", "deepopt_core.sparsity",
]  # fmt: skip


def test_api_facing_modules_import_no_heavy_libraries():
    code = (
        "import sys\n"
        f"for name in {LIGHT_MODULES!r}: __import__(name)\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'fastapi', 'celery', 'sqlalchemy') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == ""
