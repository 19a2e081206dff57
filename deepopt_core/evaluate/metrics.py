"""Quality of an optimized model against the original, on the same inputs: the one place these are computed
(the passes' own checks, the benchmarks and the quantization search all use these functions).

* ``fidelity_cosine``: mean over samples of the cosine similarity of the flattened first outputs
  (:func:`row_cosines`: two zero rows agree, 1.0; a zero row against any other, 0.0);
* ``max_abs_diff``: largest absolute difference of the first outputs;
* ``top1_agreement``: share of samples with the same arg-max (classifier-shaped outputs: 2-D, more than one class);
* ``accuracy``: share of samples whose arg-max equals the label, when the data has labels;
* ``top5_accuracy``: share whose label is among the 5 highest outputs (classifiers of more than 5 classes).

Pure numpy: importing this module loads no model runtime and nothing else of the package.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

TOP_K = 5


def _rows(values: ArrayLike) -> np.ndarray:
    """`values` as float64 rows: axis 0 kept, the rest flattened (a scalar is one row of one value)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return array.reshape(1, 1)
    return array.reshape(array.shape[0], math.prod(array.shape[1:]))


def row_cosines(reference: ArrayLike, candidate: ArrayLike) -> np.ndarray:
    """The cosine similarity of each pair of matching rows (axis 0; the rest of a row flattened), in float64.

    Any numeric or boolean dtype is compared as float64. Two all-zero rows are the same output (1.0); an all-zero
    row against a non-zero one shares no direction (0.0). Rows are normalized before the dot product, so values
    whose squares would overflow float64 still compare. NaN in a row gives NaN for that row.

    Raises:
        ValueError: the two have a different number of rows or rows of different sizes.
    """
    ref, cand = _rows(reference), _rows(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"cannot compare outputs of {ref.shape[0]} rows of {ref.shape[1]} values with "
                         f"{cand.shape[0]} rows of {cand.shape[1]}")
    unit_ref, ref_zero = _unit_rows(ref)
    unit_cand, cand_zero = _unit_rows(cand)
    cosines = np.clip((unit_ref * unit_cand).sum(axis=1), -1.0, 1.0)
    return np.where(ref_zero & cand_zero, 1.0, cosines)


def _unit_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row scaled to unit length (a zero row stays zero), and which rows are zero. Rows are divided by their
    largest magnitude first, so squaring a value near float64's limit cannot overflow the norm."""
    peak = np.abs(rows).max(axis=1, initial=0.0)
    zero = peak == 0
    scaled = rows / np.where(zero, 1.0, peak)[:, None]
    return scaled / np.where(zero, 1.0, np.linalg.norm(scaled, axis=1))[:, None], zero


def cosine_fidelity(reference: ArrayLike, candidate: ArrayLike) -> float:
    """Mean of :func:`row_cosines` over the rows: 1.0 when every row points the same way as its reference.

    Raises:
        ValueError: no rows, or the shapes differ as :func:`row_cosines` says.
    """
    cosines = row_cosines(reference, candidate)
    if cosines.size == 0:
        raise ValueError("no rows to compare")
    return float(cosines.mean())


def is_classifier(outputs: np.ndarray) -> bool:
    return outputs.ndim == 2 and outputs.shape[1] > 1


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy, or None when the outputs are not classifier-shaped or sizes differ."""
    if not is_classifier(outputs) or len(labels) != len(outputs):
        return None
    return float((outputs.argmax(axis=1) == labels).mean())


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Fidelity of `candidate` outputs to `reference` outputs (same rows): ``fidelity_cosine``, ``max_abs_diff``
    and, for classifier-shaped outputs, ``top1_agreement``; ``{"comparable": False}`` when the shapes differ."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.ndim == 0 or candidate.ndim == 0 or reference.size == 0:
        return {"comparable": False}
    ref, cand = _rows(reference), _rows(candidate)
    if ref.shape != cand.shape:
        return {"comparable": False}
    result: dict[str, Any] = {
        "fidelity_cosine": round(cosine_fidelity(ref, cand), 6),
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


def top_k_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the `k` highest outputs."""
    top = np.argpartition(-outputs, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())
