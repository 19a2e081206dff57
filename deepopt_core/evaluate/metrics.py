"""Quality of an optimized model against the original, on the same inputs.

* ``fidelity_cosine``: mean over samples of the cosine similarity of the flattened first outputs;
* ``max_abs_diff``: largest absolute difference of the first outputs;
* ``top1_agreement``: share of samples with the same arg-max (classifier-shaped outputs: 2-D, more than one class);
* ``accuracy``: share of samples whose arg-max equals the label, when the data has labels;
* ``top5_accuracy``: share whose label is among the 5 highest outputs (classifiers of more than 5 classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepopt_core.evaluate.inputs import batches
from deepopt_core.evaluate.runners import Runner


def first_outputs(runner: Runner, feed: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """The first output of `runner` over all rows of `feed`, batch by batch, concatenated."""
    parts = [runner(batch)[0] for batch in batches(feed, batch_size)]
    return np.concatenate(parts, axis=0) if parts else np.empty(0)


def is_classifier(outputs: np.ndarray) -> bool:
    return outputs.ndim == 2 and outputs.shape[1] > 1


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy, or None when the outputs are not classifier-shaped or sizes differ."""
    if not is_classifier(outputs) or len(labels) != len(outputs):
        return None
    return float((outputs.argmax(axis=1) == labels).mean())


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Fidelity of `candidate` outputs to `reference` outputs (same rows)."""
    if reference.shape[0] != candidate.shape[0] or reference.size == 0:
        return {"comparable": False}
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    if ref.shape != cand.shape:
        return {"comparable": False}
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = (ref * cand).sum(axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(
        np.linalg.norm(ref, axis=1) == np.linalg.norm(cand, axis=1), 1.0, 0.0))
    result: dict[str, Any] = {
        "fidelity_cosine": round(float(cosine.mean()), 6),
        "max_abs_diff": float(np.abs(ref - cand).max()),
    }
    if is_classifier(reference):
        result["top1_agreement"] = round(float((reference.argmax(1) == candidate.argmax(1)).mean()), 6)
    return result


def quality(reference: np.ndarray | None, candidate: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Metrics of one model: comparison with the reference (when given) and accuracy (when labelled)."""
    metrics: dict[str, Any] = {}
    if reference is not None:
        metrics.update(compare(reference, candidate))
    if labels is not None:
        value = accuracy(candidate, labels)
        if value is not None:
            metrics["accuracy"] = round(value, 6)
        if value is not None and candidate.shape[1] > TOP_K:
            metrics[f"top{TOP_K}_accuracy"] = round(top_k_accuracy(candidate, labels, TOP_K), 6)
    return metrics


TOP_K = 5


def top_k_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the `k` highest outputs."""
    top = np.argpartition(-outputs, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())
