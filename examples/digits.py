"""Build real, tiny models for DeepOpt from scikit-learn's bundled digits data (nothing is downloaded).

A 64 -> 128 -> 64 -> 10 MLP is trained for a few seconds on a CPU (about 97% held-out accuracy, fixed seed)
and written in every format DeepOpt reads:

* ``digits_mlp.onnx``: ONNX (legacy TorchScript-based exporter, opset 17, symbolic batch dimension);
* ``digits_mlp.ts``: TorchScript, traced (the archive keeps the traced example input, so its shape is known);
* ``digits_mlp.pt2``: ``torch.export`` program with a dynamic batch dimension;
* ``digits_eval.npz``: the held-out split, arrays ``input`` (N, 64) float32 and ``labels`` (N,) int64;
* ``digits_calib.npz``: 128 training rows, array ``input`` only (calibration data).

The model input is named ``input`` and its output ``logits``. This module imports nothing from
``deepopt_core``: the tests and ``examples/make_digits_models.py`` both call :func:`build_digits_models`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("deepopt.examples.digits")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FILES = {
    "onnx": "digits_mlp.onnx",
    "torchscript": "digits_mlp.ts",
    "torch_export": "digits_mlp.pt2",
    "eval": "digits_eval.npz",
    "calibration": "digits_calib.npz",
}


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as float32 rows in [0, 1]: (x_train, y_train, x_test, y_test), 75/25.

    Args:
        seed: seed of the shuffle before the split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(len(digits.data), 64)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.75 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def make_mlp() -> Any:
    """The untrained digits MLP (a ``torch.nn.Module`` whose ``forward`` takes one tensor named ``input``)."""
    import torch
    from torch import nn

    class DigitsMLP(nn.Module):
        """64 -> 128 -> 64 -> 10 with ReLU; named layers ``fc1``, ``fc2``, ``fc3``."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 128)
            self.fc2 = nn.Linear(128, 64)
            self.fc3 = nn.Linear(64, 10)

        def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (the ONNX input name)
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(input)))))

    return DigitsMLP()


def train_mlp(x: np.ndarray, y: np.ndarray, *, epochs: int = 40, seed: int = 0) -> Any:
    """Train the digits MLP with Adam on (x, y); deterministic for a seed. Returns the model in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a torch model on (x, y)."""
    import torch

    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(-1).numpy()
    return float((predictions == y).mean())


def save_onnx(model: Any, path: Path, *, opset: int = 17) -> Path:
    """Export with the legacy exporter: one input ``input`` [batch, 64], one output ``logits`` [batch, 10]."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            model, (torch.zeros(1, 64),), str(path),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, dynamo=False,
        )  # fmt: skip
    return path


def save_torchscript(model: Any, path: Path, example: np.ndarray) -> Path:
    """Trace on `example` (stored in the archive as the traced input) and save."""
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.from_numpy(example),))
    traced.save(str(path))
    return path


def save_torch_export(model: Any, path: Path, example: np.ndarray) -> Path:
    """``torch.export`` with a dynamic batch dimension, saved as a .pt2 archive."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.from_numpy(example),), dynamic_shapes={INPUT_NAME: {0: batch}})
    torch.export.save(program, str(path))
    return path


def build_digits_models(outdir: str | Path, *, seed: int = 0, epochs: int = 40) -> dict[str, Path]:
    """Train the digits MLP and write every file of :data:`FILES` into `outdir`.

    Args:
        outdir: folder to write into (created if missing).
        seed: seed of the split and the training.
        epochs: training epochs (40 take a few seconds on one core).

    Returns:
        The paths, keyed like :data:`FILES` (the held-out accuracy is logged).
    """
    import torch

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    x_train, y_train, x_test, y_test = digits_split(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest (and reproducibly) on one thread
    try:
        model = train_mlp(x_train, y_train, epochs=epochs, seed=seed)
    finally:
        torch.set_num_threads(threads)
    log.info("digits MLP: %.1f%% held-out accuracy after %.1f s", 100 * accuracy(model, x_test, y_test),
             time.monotonic() - started)
    paths = {key: outdir / name for key, name in FILES.items()}
    save_onnx(model, paths["onnx"])
    save_torchscript(model, paths["torchscript"], x_train[:2])
    save_torch_export(model, paths["torch_export"], x_train[:2])
    np.savez(paths["eval"], **{INPUT_NAME: x_test, "labels": y_test})
    np.savez(paths["calibration"], **{INPUT_NAME: x_train[:128]})
    return paths
