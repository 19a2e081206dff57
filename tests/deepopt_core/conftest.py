"""Fixtures of the core's tests: real tiny models, built once per session into a temp dir."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.models import build_tiny_bert, write_text_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# One thread: tiny models run fastest on one, and timings stay stable on a busy 2-core machine.
FAST_BENCH = {"batch_sizes": [1, 16], "runs": 5, "warmup": 1, "threads": 1}


@pytest.fixture(scope="session")
def digits(digits_paths: dict[str, Path]) -> dict[str, Path]:
    """Here `digits` is the dict of paths (onnx, torchscript, torch_export, eval, calibration), built once per
    session by the root conftest."""
    return digits_paths


@pytest.fixture(scope="session")
def tiny_bert_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def tiny_bert_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_tiny_bert(tmp_path_factory.mktemp("bert_tar"), archive="tar", tokenizer=False)


@pytest.fixture(scope="session")
def text_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_jsonl(tmp_path_factory.mktemp("text") / "text.jsonl")


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy a session file into this test's tmp dir (tests may modify or corrupt their copy)."""

    def copy(path: Path, name: str | None = None) -> Path:
        target = tmp_path / (name or path.name)
        shutil.copyfile(path, target)
        return target

    return copy


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (training tests: two xdist processes share 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
