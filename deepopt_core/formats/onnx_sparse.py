"""Pruned ONNX models stored compactly: float initializers as ``sparse_initializer`` (COO) where that is smaller,
and back. onnx and numpy only (the API imports the loader that densifies).

Why sparse initializers, and not only a compressed download: the ``.onnx`` file a user gets is then small *and*
still a model. ``curl -O`` or the generated client's download give a file that ONNX Runtime loads as it is (it
densifies sparse initializers at load, so outputs and latency are those of the dense model); nothing needs
unzipping or a client that negotiates ``Content-Encoding``. With int64 indices (the only kind ``onnx.checker``
accepts) an fp32 tensor shrinks above 2/3 sparsity: 90% unstructured sparsity stores a layer in about 30% of its
dense bytes. The artifact is written that way only when it is smaller and ONNX Runtime gives exactly the dense
model's outputs on the job's sample inputs (:func:`save_onnx_compact`); the sizes (dense, stored, and gzip of the
stored file: what a compressed transfer or archive of it would take) go into the artifact's benchmark metrics.
The API serves the stored file as it is (its sha256 stays the ETag, and ``Range`` requests keep working), so the
saving needs nothing from the client; gzip on the wire would halve it again (see ``gzip_bytes``) but is not served.

Every loader of this project densifies on the way in (:func:`densify_onnx` from
:func:`deepopt_core.formats.onnx_inspect.load_onnx`), so inspection, sparsity measurement and the passes see
plain initializers, with limits on what a sparse tensor may expand to.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger("deepopt.formats")
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
MAX_DENSE_ELEMENTS = 2**28  # one sparse tensor expands to at most a 1 GiB float32 tensor
MAX_TOTAL_ELEMENTS = 2**30
GZIP_LIMIT_BYTES = 64 * 2**20  # the gzip size is measured (a second or so) for stored files up to this size
MIN_SAVING = 0.1  # sparse initializers only when they make the file at least this much smaller (not for a few
# all-zero biases: some tools still do not read sparse initializers)


def densify_onnx(model: onnx.ModelProto, *, copy: bool = True) -> onnx.ModelProto:
    """`model` with every ``sparse_initializer`` turned back into a dense initializer (a copy unless `copy=False`).

    Raises:
        ValueError: a sparse tensor that declares more than :data:`MAX_DENSE_ELEMENTS` elements, whose indices
            fall outside its shape, or whose values and indices disagree.
    """
    if not len(model.graph.sparse_initializer):
        return model
    out = model
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    total = 0
    for sparse in out.graph.sparse_initializer:
        if TensorProto.EXTERNAL in (sparse.values.data_location, sparse.indices.data_location):
            raise ValueError(f"sparse initializer {sparse.values.name!r} keeps its data in an external file")
        dims = tuple(int(d) for d in sparse.dims)
        size = int(np.prod(dims, dtype=np.int64)) if dims else 1
        total += size
        if any(d < 0 for d in dims) or size > MAX_DENSE_ELEMENTS or total > MAX_TOTAL_ELEMENTS:
            raise ValueError(f"sparse initializer {sparse.values.name!r} declares shape {list(dims)}, more than "
                             f"{MAX_DENSE_ELEMENTS} elements")
        out.graph.initializer.append(_sparse_to_dense(sparse, dims, size))
    del out.graph.sparse_initializer[:]
    return out


def _sparse_to_dense(sparse: onnx.SparseTensorProto, dims: tuple[int, ...], size: int) -> TensorProto:
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    if indices.ndim == 2:  # [nnz, rank] coordinates
        if indices.shape[1] != len(dims) or (indices < 0).any() or (indices >= np.array(dims)).any():
            raise ValueError(f"sparse initializer {sparse.values.name!r} has indices outside its shape")
        indices = np.ravel_multi_index(tuple(indices.T), dims)
    indices = indices.reshape(-1)
    if indices.size != values.size or (indices.size and (indices.min() < 0 or indices.max() >= size)):
        raise ValueError(f"sparse initializer {sparse.values.name!r} has indices outside its shape or a different "
                         "number of values and indices")
    dense = np.zeros(size, dtype=values.dtype)
    dense[indices] = values
    return numpy_helper.from_array(dense.reshape(dims), sparse.values.name)


def compact_onnx(
    model: onnx.ModelProto, *, min_sparsity: float = 0.0, index_dtype: Literal["int64", "smallest"] = "int64"
) -> tuple[onnx.ModelProto, list[str]]:
    """Move float initializers to ``graph.sparse_initializer`` (COO, linear indices) where that is smaller.

    ONNX Runtime densifies sparse initializers when it loads the model, so the result runs unchanged (same
    outputs, same latency); only the file shrinks. With int64 indices (the only kind ``onnx.checker`` accepts),
    an fp32 tensor shrinks above 2/3 sparsity; ``index_dtype="smallest"`` uses int32/int16 indices, which ONNX
    Runtime loads but ``onnx.checker`` refuses.

    Args:
        model: the pruned model (not modified).
        min_sparsity: leave tensors with fewer zeros dense even when smaller.
        index_dtype: ``"int64"`` (standard) or ``"smallest"`` (ONNX Runtime only).

    Returns:
        (the compact copy, names of the initializers stored sparse).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_inputs = {i.name for i in out.graph.input}
    keep: list[TensorProto] = []
    moved: list[str] = []
    for init in out.graph.initializer:
        if init.data_type not in FLOAT_TYPES or init.name in graph_inputs or init.data_location != 0:
            keep.append(init)
            continue
        array = numpy_helper.to_array(init)
        flat = array.reshape(-1)
        nonzero = np.flatnonzero(flat)
        if array.size == 0 or 1.0 - nonzero.size / array.size < min_sparsity:
            keep.append(init)
            continue
        itype: type[np.integer[Any]] = np.int64
        if index_dtype == "smallest":
            itype = np.int16 if array.size <= np.iinfo(np.int16).max else (
                np.int32 if array.size <= np.iinfo(np.int32).max else np.int64)
        sparse_bytes = nonzero.size * (flat.itemsize + np.dtype(itype).itemsize)
        if sparse_bytes >= array.nbytes:
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[nonzero], init.name)
        indices = numpy_helper.from_array(nonzero.astype(itype), init.name + "__indices")
        out.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(array.shape)))
        moved.append(init.name)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out, moved


def save_onnx_compact(model: onnx.ModelProto, path: str | Path, sample: dict[str, np.ndarray] | None = None
                      ) -> dict[str, Any]:
    """Write `model` to `path` with sparse initializers where that is smaller (by :data:`MIN_SAVING` of the file at
    least) and runs the same, else dense.

    The compact form is kept only when ONNX Runtime loads it and returns exactly (bit for bit) the dense model's
    outputs on `sample`; otherwise the dense model is written and the reason recorded.

    Args:
        model: the model (dense initializers).
        path: the .onnx file to write.
        sample: inputs by name for the check (None: the file is checked by loading it only).

    Returns:
        ``{"layout": "sparse_initializers" | "dense", "dense_bytes", "stored_bytes", "gzip_bytes",
        "sparse_initializers": [names]}`` (and ``"dense_reason"`` when a smaller compact form was not kept).

    Raises:
        ValueError: the model is larger than protobuf's 2 GB limit.
    """
    from deepopt_core.formats.onnx import save_onnx

    path = Path(path)
    save_onnx(model, path)
    dense_bytes = path.stat().st_size
    report: dict[str, Any] = {"layout": "dense", "dense_bytes": dense_bytes, "stored_bytes": dense_bytes,
                              "sparse_initializers": []}
    compact, moved = compact_onnx(model)
    if moved and compact.ByteSize() <= (1 - MIN_SAVING) * dense_bytes:
        reason = _same_outputs(model, compact, sample)
        if reason is None:
            save_onnx(compact, path)
            report.update(layout="sparse_initializers", stored_bytes=path.stat().st_size, sparse_initializers=moved)
        else:
            save_onnx(model, path)
            report["dense_reason"] = reason
            log.warning("kept the dense ONNX file: %s", reason)
    if report["stored_bytes"] <= GZIP_LIMIT_BYTES:
        report["gzip_bytes"] = len(gzip.compress(path.read_bytes(), compresslevel=6, mtime=0))
    return report


def _same_outputs(dense: onnx.ModelProto, compact: onnx.ModelProto, sample: dict[str, np.ndarray] | None
                  ) -> str | None:
    from deepopt_core.formats.ort_session import inference_session

    try:
        sessions = [inference_session(m.SerializeToString()) for m in (dense, compact)]
        if not sample:
            return None
        feed = {i.name: sample[i.name] for i in sessions[0].get_inputs() if i.name in sample}
        expected, got = (s.run(None, feed) for s in sessions)
    except Exception as exc:  # ORT raises its own exception types
        return f"ONNX Runtime cannot run the sparse-initializer form: {str(exc).splitlines()[0][:300]}"
    if len(expected) != len(got) or any(not np.array_equal(a, b, equal_nan=True) for a, b in
                                        zip(expected, got, strict=False)):
        return "ONNX Runtime's outputs of the sparse-initializer form differ from the dense model's"
    return None
