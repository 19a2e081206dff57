"""The one cosine fidelity (deepopt_core/evaluate/metrics.py) that the passes' checks, the quantization search
and the benchmarks share: its values, its edge cases (zero rows, batches, dtypes, shapes) and its callers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from deepopt_core.evaluate.metrics import compare, cosine_fidelity, row_cosines
from tests.conftest import ROOT


def _reference_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_same_opposite_orthogonal_and_scaled_rows() -> None:
    reference = np.array([[1.0, 2.0], [1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    candidate = np.array([[1.0, 2.0], [0.0, 5.0], [-3.0, -4.0], [10.0, 10.0]])
    np.testing.assert_allclose(row_cosines(reference, candidate), [1.0, 0.0, -1.0, 1.0], atol=1e-12)
    assert cosine_fidelity(reference, candidate) == pytest.approx(0.25)


def test_a_batch_is_compared_row_by_row_with_the_rest_of_each_row_flattened() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(8, 5, 3))  # token outputs: [batch, sequence, hidden]
    candidate = reference + rng.normal(scale=0.3, size=reference.shape)
    cosines = row_cosines(reference, candidate)
    assert cosines.shape == (8,) and cosines.dtype == np.float64
    np.testing.assert_allclose(cosines, _reference_cosines(reference, candidate), rtol=1e-12)
    assert cosine_fidelity(reference, candidate) == pytest.approx(float(cosines.mean()))
    # One row of a batch changed changes that row's cosine only.
    changed = candidate.copy()
    changed[3] *= -1
    np.testing.assert_allclose(np.delete(row_cosines(reference, changed), 3), np.delete(cosines, 3))


def test_zero_rows_agree_with_zero_rows_only() -> None:
    reference = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    candidate = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [-0.0, 0.0]])
    np.testing.assert_array_equal(row_cosines(reference, candidate), [1.0, 0.0, 0.0, 1.0])
    assert cosine_fidelity(np.zeros((3, 4)), np.zeros((3, 4))) == 1.0
    assert cosine_fidelity(np.zeros((3, 4)), np.ones((3, 4))) == 0.0
    assert compare(np.zeros((2, 3)), np.zeros((2, 3)))["fidelity_cosine"] == 1.0


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.bool_, np.float16, np.float32])
def test_any_numeric_dtype_is_compared_in_float64(dtype: type) -> None:
    values = np.array([[100, 100, 0], [1, 0, 1], [0, 1, 1]])
    reference, candidate = values.astype(dtype), values[::-1].astype(dtype)
    expected = row_cosines(values.astype(np.float64), values[::-1].astype(np.float64))
    result = row_cosines(reference, candidate)
    assert result.dtype == np.float64
    # int8 100 * 100 would wrap and float16 100**2 + 100**2 is exact; bool is 0/1 either way.
    np.testing.assert_allclose(result, (expected if dtype is not np.bool_ else
                                        row_cosines(values.astype(bool).astype(float),
                                                    values[::-1].astype(bool).astype(float))), rtol=1e-6)
    assert cosine_fidelity(reference, reference) == pytest.approx(1.0)


def test_values_whose_norms_overflow_when_multiplied_still_compare() -> None:
    big = np.array([[1e200, 1e200], [1e-200, 0.0]])
    np.testing.assert_allclose(row_cosines(big, big), [1.0, 1.0])


def test_lists_vectors_and_scalars() -> None:
    assert cosine_fidelity([[1, 0], [0, 1]], [[1, 0], [0, 1]]) == 1.0
    # A 1-D array is a batch of one-value rows: each cosine is the sign agreement.
    np.testing.assert_array_equal(row_cosines(np.array([2.0, -1.0, 0.0]), np.array([3.0, 1.0, 0.0])), [1.0, -1.0, 1.0])
    assert cosine_fidelity(np.float32(2.0), np.float32(5.0)) == 1.0


def test_cosines_stay_within_minus_one_and_one() -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(256, 7))
    cosines = row_cosines(rows, rows * 3.0)
    assert cosines.max() <= 1.0 and cosines.min() >= 1.0 - 1e-12
    assert row_cosines(rows, -rows).min() >= -1.0


def test_nan_is_not_hidden() -> None:
    cosines = row_cosines(np.array([[np.nan, 1.0], [1.0, 1.0]]), np.array([[1.0, 1.0], [1.0, 1.0]]))
    assert np.isnan(cosines[0]) and cosines[1] == pytest.approx(1.0)


def test_mismatched_or_empty_outputs_are_errors() -> None:
    with pytest.raises(ValueError, match="rows"):
        row_cosines(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="rows"):
        row_cosines(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="no rows"):
        cosine_fidelity(np.empty((0, 3)), np.empty((0, 3)))
    assert compare(np.ones((2, 3)), np.ones((3, 3))) == {"comparable": False}
    assert compare(np.ones((2, 3)), np.ones((2, 4))) == {"comparable": False}
    assert compare(np.empty((0, 3)), np.empty((0, 3))) == {"comparable": False}


def test_compare_adds_arg_max_agreement_for_classifier_outputs_only() -> None:
    reference = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    candidate = np.array([[0.2, 0.8], [0.7, 0.3], [0.9, 0.1], [0.6, 0.4]], dtype=np.float32)
    result = compare(reference, candidate)
    assert result["top1_agreement"] == 0.75
    assert result["fidelity_cosine"] == round(cosine_fidelity(reference, candidate), 6)
    assert result["max_abs_diff"] == pytest.approx(0.6)
    tokens = np.ones((2, 3, 4))
    assert "top1_agreement" not in compare(tokens, tokens) and compare(tokens, tokens)["fidelity_cosine"] == 1.0


def test_the_quantization_search_metric_pools_the_rows_of_runs_of_different_shapes() -> None:
    from deepopt_core.passes.quantize.ort_common import fidelity_metric

    rng = np.random.default_rng(2)
    # Two runs of token outputs padded to different lengths: the rows of both count, each run at its width.
    reference = [[rng.normal(size=(4, 6, 3))], [rng.normal(size=(2, 9, 3))]]
    candidate = [[run[0] + rng.normal(scale=0.2, size=run[0].shape)] for run in reference]
    expected = np.concatenate([row_cosines(r[0], c[0]) for r, c in zip(reference, candidate, strict=True)]).mean()
    assert fidelity_metric(reference)(candidate) == pytest.approx(float(expected))
    assert fidelity_metric(reference)(reference) == pytest.approx(1.0)


def test_importing_the_metrics_loads_no_model_runtime() -> None:
    code = ("import sys, deepopt_core.evaluate.metrics; "
            "loaded = [m for m in ('torch', 'onnx', 'onnxruntime', 'deepopt_core.specs') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
