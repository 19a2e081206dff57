"""Model inputs for checks, metrics and timing: from a dataset, else synthetic from the input specs.

Synthetic inputs use a fixed seed; a symbolic first dimension is the batch, other symbolic dimensions get
:data:`DEFAULT_SEQUENCE`. Text datasets are tokenized with the Hugging Face model's own tokenizer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from deepopt_core.datasets import Dataset
from deepopt_core.errors import InvalidDataset
from deepopt_core.specs import ModelInfo, TensorInfo

log = logging.getLogger("deepopt.evaluate")

DEFAULT_SEQUENCE = 16
MAX_TOKENS = 128
SEED = 0


def _dims(tensor: TensorInfo, rows: int) -> list[int]:
    if tensor.shape is None:
        raise InvalidDataset(
            f"the shape of input {tensor.name!r} is unknown; give an eval or calibration dataset", field="eval"
        )
    return [rows if axis == 0 else (d if isinstance(d, int) and d > 0 else DEFAULT_SEQUENCE)
            for axis, d in enumerate(tensor.shape)]


def synthetic_feed(info: ModelInfo, rows: int, *, seed: int = SEED, vocab_size: int = 1000) -> dict[str, np.ndarray]:
    """Random inputs shaped like the model's (standard normal floats; token ids below `vocab_size`)."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for tensor in info.inputs:
        shape = _dims(tensor, rows)
        dtype = np.dtype(tensor.dtype) if tensor.dtype not in ("bfloat16", "unknown") else np.dtype("float32")
        if tensor.name == "attention_mask":
            feed[tensor.name] = np.ones(shape, dtype=dtype)
        elif tensor.name == "token_type_ids":
            feed[tensor.name] = np.zeros(shape, dtype=dtype)
        elif dtype.kind == "f":
            feed[tensor.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            high = max(2, vocab_size) if tensor.name == "input_ids" else 2
            feed[tensor.name] = rng.integers(0, high, size=shape).astype(dtype)
        else:
            feed[tensor.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feed


def dataset_feed(info: ModelInfo, dataset: Dataset, *, tokenizer: Any = None,
                 max_rows: int | None = None) -> dict[str, np.ndarray]:
    """The dataset's rows as model inputs (cast to the input dtypes; a missing attention mask is all ones and
    token type ids all zeros). Text datasets need `tokenizer`."""
    if dataset.texts is not None:
        if tokenizer is None:
            raise InvalidDataset("a text dataset needs a Hugging Face model with a tokenizer")
        texts = dataset.texts[:max_rows] if max_rows else dataset.texts
        longest = max(len(tokenizer(t, truncation=True, max_length=MAX_TOKENS)["input_ids"]) for t in texts)
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max(longest, 2),
                            return_tensors="np")
        arrays = {k: np.asarray(v) for k, v in encoded.items()}
    else:
        arrays = {k: (v[:max_rows] if max_rows else v) for k, v in dataset.arrays.items()}
    feed: dict[str, np.ndarray] = {}
    for tensor in info.inputs:
        dtype = np.dtype(tensor.dtype) if tensor.dtype not in ("bfloat16", "unknown") else np.dtype("float32")
        if tensor.name in arrays:
            feed[tensor.name] = np.ascontiguousarray(arrays[tensor.name].astype(dtype, copy=False))
        elif tensor.name in ("attention_mask", "token_type_ids") and "input_ids" in arrays:
            fill = np.ones if tensor.name == "attention_mask" else np.zeros
            feed[tensor.name] = fill(arrays["input_ids"].shape, dtype=dtype)
        else:
            raise InvalidDataset(f"the dataset has no array {tensor.name!r} for the model input of that name")
    return feed


def labels_of(dataset: Dataset | None, rows: int) -> np.ndarray | None:
    if dataset is None or dataset.labels is None:
        return None
    return dataset.labels[:rows]


def rows_of(feed: dict[str, np.ndarray]) -> int:
    return len(next(iter(feed.values()))) if feed else 0


def take(feed: dict[str, np.ndarray], start: int, count: int) -> dict[str, np.ndarray]:
    """`count` rows from `start`, wrapping around (so any batch size can be filled from a small dataset)."""
    total = rows_of(feed)
    index = (np.arange(start, start + count) % total) if total else np.arange(0)
    return {name: np.ascontiguousarray(array[index]) for name, array in feed.items()}


def batches(feed: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive batches covering every row once (the last may be smaller)."""
    total = rows_of(feed)
    return [{n: a[i: i + size] for n, a in feed.items()} for i in range(0, total, size)]
