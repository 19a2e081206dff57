"""Dataset inspection, loading and fit to a model's inputs."""

from __future__ import annotations

import numpy as np
import pytest

from deepopt_core.datasets import check_dataset_for_model, inspect_dataset, load_dataset
from deepopt_core.errors import InvalidDataset
from deepopt_core.formats.onnx_inspect import inspect_onnx
from deepopt_core.specs import ModelInfo, TensorInfo


def test_inspect_digits_eval(digits):
    info = inspect_dataset(digits["eval"])
    assert info.format == "npz"
    assert info.arrays == {"input": [450, 64], "labels": [450]}
    assert info.dtypes == {"input": "float32", "labels": "int64"}
    assert info.num_rows == 450 and info.has_labels
    assert check_dataset_for_model(info, inspect_onnx(digits["onnx"])) == []
    calib = inspect_dataset(digits["calibration"])
    assert calib.num_rows == 128 and not calib.has_labels


def test_jsonl(text_jsonl, tmp_path):
    info = inspect_dataset(text_jsonl)
    assert info.format == "jsonl" and info.num_rows == 12 and info.has_labels
    data = load_dataset(text_jsonl)
    assert len(data.texts) == 12 and data.labels.dtype == np.int64
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(InvalidDataset, match="every line"):
        inspect_dataset(bad)
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(InvalidDataset, match="line 2"):
        inspect_dataset(bad)


def test_npz_problems(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, input=np.zeros((4, 3), np.float32), labels=np.zeros(5, np.int64))
    with pytest.raises(InvalidDataset, match="same number of rows"):
        inspect_dataset(path)
    np.savez(path, input=np.array([{"a": 1}] * 3, dtype=object))
    with pytest.raises(InvalidDataset, match="pickles"):
        inspect_dataset(path)
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(InvalidDataset):
        inspect_dataset(path)


def test_check_dataset_for_model(tmp_path, text_jsonl):
    model = ModelInfo(format="onnx", inputs=[TensorInfo(name="input", shape=["batch", 64])])
    path = tmp_path / "d.npz"
    np.savez(path, pixels=np.zeros((4, 64), np.float32))
    (problem,) = check_dataset_for_model(inspect_dataset(path), model)
    assert "no array named 'input'" in problem
    np.savez(path, input=np.zeros((4, 32), np.float32))
    (problem,) = check_dataset_for_model(inspect_dataset(path), model)
    assert "needs 64 at dimension 1" in problem
    np.savez(path, input=np.zeros((4, 8, 8), np.float32))
    assert "dimensions" in check_dataset_for_model(inspect_dataset(path), model)[0]
    assert check_dataset_for_model(inspect_dataset(text_jsonl), model)
    hf = ModelInfo(format="hf", inputs=[TensorInfo(name="input_ids", shape=["batch", "sequence"], dtype="int64"),
                                        TensorInfo(name="attention_mask", shape=["batch", "sequence"], dtype="int64")],
                   details={"has_tokenizer": True})
    assert check_dataset_for_model(inspect_dataset(text_jsonl), hf) == []
    np.savez(path, input_ids=np.zeros((2, 5), np.int64))  # attention_mask may be left out
    assert check_dataset_for_model(inspect_dataset(path), hf) == []


def test_load_npz_splits_labels(digits):
    data = load_dataset(digits["eval"])
    assert set(data.arrays) == {"input"} and data.labels.shape == (450,) and data.num_rows == 450
