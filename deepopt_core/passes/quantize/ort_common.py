"""What the ONNX quantization modes share: sessions, feeds, metrics, verification, node selection, the accuracy
guard, bookkeeping of decisions, and graph rewrites used by several modes.

The mode functions live in :mod:`.ort_dynamic` (`quantize_dynamic`), :mod:`.ort_static` (`quantize_static`),
:mod:`.ort_weight_only` (`quantize_weight_only`) and :mod:`.ort_float` (`convert_float`). Each reads a float ONNX
model from `input_path`, writes the result to `output_path` (a single file, no external data) and returns a
JSON-serializable dict of decisions: what was quantized, what was kept in float and why, the settings used, the
pre-processing applied, the accuracy guard's measurements, and a verification that ONNX Runtime's CPU provider
loads and runs the result. Keyword arguments are named like the fields of the pass's pydantic configs.

Calibration and evaluation data are sequences (or iterables) of feeds, `{input_name: np.ndarray}`: a feed may
hold one sample or a batch; inputs the model does not declare are dropped and dtypes are cast to the model's.

All modes take `exclude` (node names, op types or glob patterns); the integer modes also take an accuracy guard
(`eval_feeds`, `metric`, `max_drop`) that measures each quantized node's sensitivity and moves the fewest, most
sensitive nodes back to float until the metric drop is within `max_drop` (:func:`accuracy_guard`).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deepopt_core.evaluate.metrics import row_cosines
from deepopt_core.passes.quantize.ort_preprocess import Fusion, op_counts, preprocess

Feed = Mapping[str, np.ndarray]
Outputs = list[list[np.ndarray]]
"""Model outputs over a sequence of feeds: one list of output arrays per feed."""
Metric = Callable[[Outputs], float]
"""Scores a model from its outputs on the eval feeds; higher is better (accuracy, fidelity, ...)."""

IntDtype = Literal["int8", "uint8"]

# ---------------------------------------------------------------------------------------------------------------
# Feeds, sessions, metrics
# ---------------------------------------------------------------------------------------------------------------

_NP_BY_ORT = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def make_session(model: str | Path | bytes | onnx.ModelProto, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session (all graph optimizations) from a path, bytes or a ModelProto."""
    from deepopt_core.formats.ort_session import inference_session, session_options

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return inference_session(str(source) if isinstance(source, Path) else source, session_options(threads))


def adapt_feed(session: Any, feed: Feed) -> dict[str, np.ndarray]:
    out = {}
    for arg in session.get_inputs():
        if arg.name not in feed:
            raise ValueError(f"feed has no value for model input {arg.name!r} (has {sorted(feed)})")
        dtype = _NP_BY_ORT.get(arg.type)
        value = np.asarray(feed[arg.name])
        out[arg.name] = value.astype(dtype, copy=False) if dtype is not None else value
    return out


def run_outputs(model: str | Path | bytes | onnx.ModelProto | Any, feeds: Iterable[Feed]) -> Outputs:
    """Runs `model` (or an existing session) on every feed and returns the outputs of each run."""
    session = model if hasattr(model, "run") else make_session(model)
    return [list(session.run(None, adapt_feed(session, feed))) for feed in feeds]


def fidelity_metric(reference: Outputs, output_index: int = 0) -> Metric:
    """A metric scoring outputs by their mean cosine similarity to `reference` (1.0 for the float model): the rows
    of every run's `output_index` output together (:func:`deepopt_core.evaluate.metrics.row_cosines`; runs may
    differ in shape, as token outputs of batches padded to different lengths do)."""

    def metric(outputs: Outputs) -> float:
        cosines = [row_cosines(ref[output_index], cand[output_index])
                   for ref, cand in zip(reference, outputs, strict=True)]
        return float(np.concatenate(cosines).mean())

    return metric


def accuracy_metric(labels: Sequence[np.ndarray] | np.ndarray, output_index: int = 0) -> Metric:
    """A metric scoring outputs by top-1 accuracy of `argmax(outputs[output_index], -1)` against `labels`."""
    flat = np.concatenate([np.asarray(y).reshape(-1) for y in labels]) if isinstance(labels, list) else labels

    def metric(outputs: Outputs) -> float:
        preds = np.concatenate([np.asarray(o[output_index]).argmax(-1).reshape(-1) for o in outputs])
        return float((preds == np.asarray(flat).reshape(-1)).mean())

    return metric


def materialize(feeds: Iterable[Feed] | None, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    if feeds is None:
        return []
    out: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        out.append({k: np.asarray(v) for k, v in feed.items()})
        if limit is not None and len(out) >= limit:
            break
    return out


def limit_samples(feeds: list[dict[str, np.ndarray]], num_samples: int | None) -> list[dict[str, np.ndarray]]:
    """The first `num_samples` rows (axis 0) of the feeds, splitting the last batch if needed."""
    if num_samples is None:
        return feeds
    out, left = [], num_samples
    for feed in feeds:
        if left <= 0:
            break
        rows = min(len(v) for v in feed.values()) if feed else 0
        out.append(feed if rows <= left else {k: v[:left] for k, v in feed.items()})
        left -= min(rows, left)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------

_NO_KERNEL = re.compile(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_BAD_TYPE = re.compile(r"Type '([^']+)' of input parameter \([^)]*\) of operator \((\w+)\) in node \(([^)]*)\)")


def verify(model: str | Path | bytes | onnx.ModelProto, feeds: Iterable[Feed] | None = None) -> dict[str, Any]:
    """Loads the model in ONNX Runtime's CPU provider and runs it on the first feed, if any.

    Returns:
        `runs_on_cpu`, the `providers` used and, when loading fails for a missing CPU kernel, the op that needs
        another execution provider (`ops_without_cpu_kernel`: op type, opset, node) and the error.
    """
    result: dict[str, Any] = {"provider": "CPUExecutionProvider"}
    try:
        session = make_session(model)
    except Exception as exc:
        message = str(exc)
        missing = [
            {"op_type": m.group(1), "opset": int(m.group(2)), "node": m.group(3)} for m in _NO_KERNEL.finditer(message)
        ]
        rejected = [
            {"op_type": m.group(2), "type": m.group(1), "node": m.group(3)} for m in _BAD_TYPE.finditer(message)
        ]
        result.update(runs_on_cpu=False, error=message[:500], ops_without_cpu_kernel=missing)
        if rejected:
            result["ops_rejecting_type"] = rejected
        if missing:
            result["note"] = "these ops need a GPU (or other) execution provider"
        return result
    first = next(iter(feeds), None) if feeds is not None else None
    if first is not None:
        try:
            outs = session.run(None, adapt_feed(session, first))
            result["finite_outputs"] = bool(all(np.isfinite(np.asarray(o, dtype=np.float64)).all() for o in outs))
        except Exception as exc:
            result.update(runs_on_cpu=False, error=str(exc)[:500])
            return result
    result["runs_on_cpu"] = True
    result["providers"] = list(session.get_providers())
    return result


# ---------------------------------------------------------------------------------------------------------------
# Node selection
# ---------------------------------------------------------------------------------------------------------------


def resolve_exclude(model: onnx.ModelProto, exclude: Sequence[str]) -> tuple[set[str], set[str], list[str]]:
    """Splits `exclude` into (node names, op types, unmatched entries).

    An entry matches node names exactly, op types exactly, or, with `*?[`, node names as a glob pattern.
    """
    names = {n.name for n in model.graph.node if n.name}
    ops = {n.op_type for n in model.graph.node}
    nodes: set[str] = set()
    op_types: set[str] = set()
    unmatched: list[str] = []
    for entry in exclude:
        hit = False
        if entry in names:
            nodes.add(entry)
            hit = True
        if entry in ops:
            op_types.add(entry)
            hit = True
        if not hit and any(ch in entry for ch in "*?["):
            matched = fnmatch.filter(sorted(names), entry)
            nodes.update(matched)
            hit = bool(matched)
        if not hit:
            unmatched.append(entry)
    nodes.update(n.name for n in model.graph.node if n.op_type in op_types and n.name)
    return nodes, op_types, unmatched


def ensure_node_names(model: onnx.ModelProto) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def has_float_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether the node's weight input (index 1; index 0 for Gather data) is a float constant."""
    inits = {i.name: i for i in model.graph.initializer}
    idx = 0 if node.op_type == "Gather" else 1
    if len(node.input) <= idx or node.input[idx] not in inits:
        return False
    return inits[node.input[idx]].data_type == TensorProto.FLOAT


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size


# ---------------------------------------------------------------------------------------------------------------
# Accuracy guard
# ---------------------------------------------------------------------------------------------------------------

Builder = Callable[[frozenset[str]], onnx.ModelProto]
"""Builds the quantized model with the given extra node names kept in float."""


def accuracy_guard(
    build: Builder,
    candidates: Sequence[str],
    float_model: str | Path | onnx.ModelProto,
    eval_feeds: Sequence[Feed],
    metric: Metric | None,
    max_drop: float,
    *,
    max_fallback: int | None = None,
    full_model: onnx.ModelProto | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Falls back to float for the fewest, most sensitive of `candidates` until the metric drop <= `max_drop`.

    Sensitivity of a node is the metric drop of the model where only that node is quantized (all other
    candidates in float), measured on `eval_feeds`, in the spirit of the per-layer sensitivity analysis of Wu
    et al., 2020 (https://arxiv.org/abs/2004.09602, section 4.3) and mixed-precision methods such as HAWQ
    (https://arxiv.org/abs/1905.03696). Nodes are then returned to float in decreasing sensitivity; the number
    kept in float starts from the additive estimate and is corrected by measurement (each step one build).

    Args:
        build: returns the quantized model with the given node names kept in float.
        candidates: names of the nodes the full build quantizes.
        float_model: the float model the drop is measured against.
        eval_feeds: evaluation feeds.
        metric: higher-is-better score of a model's outputs; default: cosine fidelity to the float model.
        max_drop: allowed `metric(float) - metric(quantized)`.
        max_fallback: most nodes to return to float (default: all candidates).
        full_model: the build with nothing extra in float, if already built.

    Returns:
        (the chosen model, a report with the float and quantized scores, each node's sensitivity and the nodes
        returned to float).
    """
    t0 = time.perf_counter()
    feeds = list(eval_feeds)
    ref_outputs = run_outputs(float_model, feeds)
    if metric is None:
        metric = fidelity_metric(ref_outputs)
    float_score = float(metric(ref_outputs))

    def score(model: onnx.ModelProto) -> float:
        return float(metric(run_outputs(model, feeds)))

    full = full_model if full_model is not None else build(frozenset())
    full_score = score(full)
    report: dict[str, Any] = {
        "metric_float": float_score,
        "metric_quantized": full_score,
        "max_drop": max_drop,
        "drop": float_score - full_score,
        "fallback_nodes": [],
    }
    if float_score - full_score <= max_drop or not candidates:
        report["within_max_drop"] = float_score - full_score <= max_drop
        report["seconds"] = round(time.perf_counter() - t0, 2)
        return full, report

    names = list(candidates)
    sensitivity: dict[str, float] = {}
    for name in names:
        others = frozenset(n for n in names if n != name)
        sensitivity[name] = float_score - score(build(others))
    ranked = sorted(names, key=lambda n: sensitivity[n], reverse=True)
    report["sensitivity"] = {n: round(sensitivity[n], 6) for n in ranked}

    limit = len(ranked) if max_fallback is None else min(max_fallback, len(ranked))
    excess = (float_score - full_score) - max_drop
    k, acc = 0, 0.0
    while k < limit and acc < excess:
        acc += max(sensitivity[ranked[k]], 0.0)
        k += 1
    k = max(k, 1)
    tried: dict[int, tuple[float, onnx.ModelProto]] = {}

    def attempt(n: int) -> float:
        if n not in tried:
            model = build(frozenset(ranked[:n]))
            tried[n] = (score(model), model)
        return float_score - tried[n][0]

    while attempt(k) > max_drop and k < limit:
        k += 1
    while k > 1 and attempt(k) <= max_drop and attempt(k - 1) <= max_drop:
        k -= 1
    ok = attempt(k) <= max_drop
    best_score, best_model = tried[k]
    report.update(
        fallback_nodes=ranked[:k],
        metric_quantized=best_score,
        drop=float_score - best_score,
        within_max_drop=ok,
        builds=len(tried) + len(names) + 1,
        seconds=round(time.perf_counter() - t0, 2),
    )
    if not ok:
        report["note"] = f"drop still above max_drop with {k} nodes in float (max_fallback={max_fallback})"
    return best_model, report


# ---------------------------------------------------------------------------------------------------------------
# Shared bookkeeping
# ---------------------------------------------------------------------------------------------------------------


def classify_nodes(
    source: onnx.ModelProto,
    result: onnx.ModelProto,
    candidates: Sequence[onnx.NodeProto],
    reasons: Mapping[str, str],
    quantized_test: Callable[[onnx.NodeProto, dict[str, onnx.NodeProto], dict[str, onnx.NodeProto]], bool],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    by_name = {n.name: n for n in result.graph.node}
    producers = {o: n for n in result.graph.node for o in n.output}
    quantized, kept = [], []
    for node in candidates:
        # Nodes given to the quantizer as excluded are float even when they read a tensor quantized for another
        # op (a Relu after a quantized Gemm reads its dequantized output).
        excluded = reasons.get(node.name, "").startswith(("excluded by the user", "accuracy guard"))
        if not excluded and quantized_test(node, by_name, producers):
            quantized.append({"node": node.name, "op_type": node.op_type})
        else:
            reason = reasons.get(node.name, "not quantized by ONNX Runtime's quantizer for this op/input")
            kept.append({"node": node.name, "op_type": node.op_type, "reason": reason})
    return quantized, kept


def was_replaced(node: onnx.NodeProto, by_name: dict[str, onnx.NodeProto], _p: dict[str, onnx.NodeProto]) -> bool:
    same = by_name.get(node.name)
    return same is None or same.op_type != node.op_type


def fed_by_dequantize(
    node: onnx.NodeProto, by_name: dict[str, onnx.NodeProto], producers: dict[str, onnx.NodeProto]
) -> bool:
    """Whether a QDQ model quantizes `node`: it is gone (folded into a QuantizeLinear), its weight comes from a
    DequantizeLinear, or (ops without a weight input) one of its inputs does. A MatMul/Gemm/Conv that reads a
    dequantized activation but its float weight directly is in float."""
    same = by_name.get(node.name)
    if same is None:
        return True

    def dequantized(name: str) -> bool:
        return name in producers and producers[name].op_type == "DequantizeLinear"

    if same.op_type in ("MatMul", "Gemm", "Conv") and len(same.input) > 1 and same.input[1] not in producers:
        return dequantized(same.input[1])  # a float constant weight: not quantized
    return any(dequantized(i) for i in same.input)


def float_ops_summary(model: onnx.ModelProto, quantizable: set[str]) -> dict[str, int]:
    skip = {"Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Cast", "Slice", "Squeeze"}
    return {
        op: n
        for op, n in sorted(op_counts(model).items())
        if op not in quantizable and op not in skip and not op.startswith(("Quantize", "Dequantize", "Dynamic"))
    }


def save_model(model: onnx.ModelProto, output_path: str | Path) -> None:
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output_path))


def finish(
    decisions: dict[str, Any],
    model: onnx.ModelProto,
    input_path: Path,
    output_path: Path,
    verify_feeds: Sequence[Feed] | None,
    t0: float,
) -> dict[str, Any]:
    save_model(model, output_path)
    decisions["verification"] = verify(output_path, verify_feeds)
    decisions["size_bytes"] = {"input": file_size(input_path), "output": file_size(output_path)}
    decisions["size_bytes"]["ratio"] = round(decisions["size_bytes"]["output"] / decisions["size_bytes"]["input"], 4)
    decisions["seconds"] = round(time.perf_counter() - t0, 2)
    return decisions


def with_int8_embeddings(
    model: onnx.ModelProto, path: Path, exclude: set[str], enabled: bool
) -> tuple[Path, list[dict[str, Any]]]:
    """Writes a copy of `model` with int8 embedding tables next to `path` (the float one stays as reference)."""
    if not enabled:
        return path, []
    model = copy.deepcopy(model)
    done = quantize_embeddings(model, exclude)
    if not done:
        return path, []
    out = path.with_name(path.stem + ".emb.onnx")
    onnx.save(model, str(out))
    return out, done


def prepare_input(input_path: Path, tmp: Path, fusion: Fusion, run_preprocess: bool) -> tuple[Path, dict[str, Any]]:
    if not run_preprocess:
        model = onnx.load(str(input_path))
        ensure_node_names(model)
        path = tmp / "input.onnx"
        onnx.save(model, str(path))
        return path, {"pre_process": "skipped"}
    path = tmp / "pre.onnx"
    info = preprocess(input_path, path, fusion=fusion)
    model = onnx.load(str(path))
    ensure_node_names(model)
    onnx.save(model, str(path))
    return path, info


def find_node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    for node in model.graph.node:
        if node.name == name:
            return node
    raise KeyError(name)



# ---------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------


def quantize_embeddings(
    model: onnx.ModelProto, exclude: set[str] | frozenset[str] = frozenset(), min_elements: int = 16384
) -> list[dict[str, Any]]:
    """Stores the tables of embedding `Gather`s as int8 with one float scale per row, in place.

    `Gather(table, ids)` becomes `Mul(Cast(Gather(table_int8, ids)), Gather(scales, ids))`: only the gathered
    rows are dequantized at run time, so it costs nothing measurable, unlike a `DequantizeLinear` of the whole
    table (which ONNX Runtime does not constant-fold) or per-tensor scales (QDQ `Gather`). Symmetric per-row
    int8 keeps the relative error of each row below 0.4%. Only float 2-D tables gathered on axis 0 with at least
    `min_elements` values are touched.

    Returns:
        One entry per converted node: node, table, rows, bytes before and after.
    """
    inits = {i.name: i for i in model.graph.initializer}
    users = Counter(i for n in model.graph.node for i in n.input)
    done: list[dict[str, Any]] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            table is None
            or node.name in exclude
            or table.data_type != TensorProto.FLOAT
            or len(table.dims) != 2
            or axis != 0
            or int(np.prod(table.dims)) < min_elements
            or users[table.name] != 1
        ):
            new_nodes.append(node)
            continue
        weights = numpy_helper.to_array(table).astype(np.float32)
        scale = np.maximum(np.abs(weights).max(axis=1, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
        base = table.name
        q_name, s_name = f"{base}_int8", f"{base}_row_scale"
        model.graph.initializer.remove(table)
        model.graph.initializer.extend(
            [numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale.astype(np.float32), s_name)]
        )
        out = node.output[0]
        prefix = node.name or base
        new_nodes.extend(
            [
                helper.make_node("Gather", [q_name, node.input[1]], [f"{prefix}_q"], name=node.name, axis=0),
                helper.make_node("Cast", [f"{prefix}_q"], [f"{prefix}_qf"], name=f"{prefix}_cast", to=1),
                helper.make_node("Gather", [s_name, node.input[1]], [f"{prefix}_s"], name=f"{prefix}_scale", axis=0),
                helper.make_node("Mul", [f"{prefix}_qf", f"{prefix}_s"], [out], name=f"{prefix}_dequant"),
            ]
        )
        done.append(
            {
                "node": node.name,
                "table": base,
                "rows": int(table.dims[0]),
                "bytes_float": int(weights.nbytes),
                "bytes_int8": int(q.nbytes + scale.nbytes),
            }
        )
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return done


# ---------------------------------------------------------------------------------------------------------------
# Feeds for ONNX Runtime's calibrators and quantizers
# ---------------------------------------------------------------------------------------------------------------


class FeedReader:
    """A rewindable `CalibrationDataReader` over materialized feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self.feeds = list(feeds)
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.feeds):
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self):  # noqa: ANN204
        return iter(self.feeds)



def adapt_to_model(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed restricted to the model's graph inputs, cast to their declared element types."""
    out = {}
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name not in feed:
            raise ValueError(f"calibration feed has no value for model input {inp.name!r} (has {sorted(feed)})")
        np_type = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        out[inp.name] = np.asarray(feed[inp.name]).astype(np_type, copy=False)
    return out



# ---------------------------------------------------------------------------------------------------------------
# Graph clean-up and logging
# ---------------------------------------------------------------------------------------------------------------


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite, in place, ``Gemm(A, B, C)`` with a constant B, ``transA=0`` and ``alpha=1`` as MatMul (+ Add).

    A transposed weight (``transB=1``) is stored transposed in a new initializer (the old one is dropped when no
    other node uses it); ``beta`` scales C. The MatMul keeps the Gemm's name. Returns the number rewritten.

    A weight transposed under its own name loses its ``value_info`` (and its graph-input type takes the new
    shape): the dynamo exporter records the shapes of initializers there, and the old [out, in] entry would
    contradict the [in, out] tensor in the quantizer's shape inference.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users = Counter(name for node in graph.node for name in node.input)
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    reshaped: set[str] = set()  # initializers transposed in place
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        has_bias = len(node.input) > 2 and bool(node.input[2])
        beta = float(attrs.get("beta", 1.0))
        if (node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.input) < 2
                or node.input[1] not in inits or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or (has_bias and beta != 1.0 and node.input[2] not in inits)):
            nodes.append(node)
            continue
        weight_name = node.input[1]
        if attrs.get("transB", 0):
            weight = numpy_helper.to_array(inits[weight_name]).T.copy()
            new_name = weight_name if users[weight_name] == 1 else f"{weight_name}_transposed"
            tensor = numpy_helper.from_array(weight, new_name)
            if new_name == weight_name:
                inits[weight_name].CopyFrom(tensor)
                reshaped.add(weight_name)
            else:
                graph.initializer.append(tensor)
                inits[new_name] = graph.initializer[-1]
            weight_name = new_name
        name = node.name or f"Gemm_{rewritten}"
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [matmul_out], name=name))
        if has_bias:
            bias = node.input[2]
            if beta != 1.0:
                values = numpy_helper.to_array(inits[bias])
                bias = f"{bias}_beta"
                graph.initializer.append(numpy_helper.from_array((values * beta).astype(values.dtype), bias))
            nodes.append(helper.make_node("Add", [matmul_out, bias], [node.output[0]], name=f"{name}_bias"))
        rewritten += 1
    if reshaped:
        value_info = [v for v in graph.value_info if v.name not in reshaped]
        del graph.value_info[:]
        graph.value_info.extend(value_info)
        for graph_input in graph.input:
            if graph_input.name in reshaped:
                tensor = inits[graph_input.name]
                graph_input.CopyFrom(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    still_used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in still_used or t.name in {i.name for i in graph.input}]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def prune_dead_nodes(model: onnx.ModelProto) -> None:
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output) or node.op_type in ("If", "Loop", "Scan"):
            keep.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # subgraph inputs from the outer scope
                for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    needed.update(i for n in g.node for i in n.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)



@contextlib.contextmanager
def quiet_logger(name: str):  # noqa: ANN202
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)

