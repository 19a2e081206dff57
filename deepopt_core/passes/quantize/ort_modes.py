"""The ONNX side of the `quantize` pass: one pure function per mode, on ONNX Runtime's tooling.

Every mode function reads a float ONNX model from `input_path`, writes the result to `output_path` (a single
file, no external data) and returns a JSON-serializable dict of decisions: what was quantized, what was kept in
float and why, the settings used, the pre-processing applied, the accuracy guard's measurements, and a
verification that ONNX Runtime's CPU provider loads and runs the result. Keyword arguments are named like the
fields of the pass's pydantic configs so that `fn(in, out, **config.model_dump(exclude={...}))` works.

Calibration and evaluation data are sequences (or iterables) of feeds, `{input_name: np.ndarray}`: a feed may
hold one sample or a batch; inputs the model does not declare are dropped and dtypes are cast to the model's.

Modes:
    * `quantize_dynamic`: int8/uint8 weights, activations quantized per batch at run time.
    * `quantize_static`: int8 weights and activations with calibrated ranges (QDQ format).
    * `quantize_weight_only`: 4- or 8-bit block-wise weights (`MatMulNBits`), float activations.
    * `convert_float`: float16 or bfloat16.

All of them take `exclude` (node names, op types or glob patterns); the integer modes also take an accuracy
guard (`eval_feeds`, `metric`, `max_drop`) that measures each quantized node's sensitivity and moves the
fewest, most sensitive nodes back to float until the metric drop is within `max_drop`.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import io
import logging
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deepopt_core.passes.quantize.ort_preprocess import Fusion, looks_like_transformer, op_counts, preprocess

logger = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]
Outputs = list[list[np.ndarray]]
"""Model outputs over a sequence of feeds: one list of output arrays per feed."""
Metric = Callable[[Outputs], float]
"""Scores a model from its outputs on the eval feeds; higher is better (accuracy, fidelity, ...)."""

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
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
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _adapt(session: Any, feed: Feed) -> dict[str, np.ndarray]:
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
    return [list(session.run(None, _adapt(session, feed))) for feed in feeds]


def cosine_fidelity(reference: Outputs, candidate: Outputs, output_index: int = 0) -> float:
    """Mean cosine similarity between matching rows (axis 0, flattened) of one output of two runs."""
    sims = []
    for ref, cand in zip(reference, candidate, strict=True):
        a = np.asarray(ref[output_index], dtype=np.float64).reshape(len(ref[output_index]), -1)
        b = np.asarray(cand[output_index], dtype=np.float64).reshape(len(cand[output_index]), -1)
        num = (a * b).sum(-1)
        den = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
        sims.append(num / den)
    return float(np.concatenate(sims).mean())


def fidelity_metric(reference: Outputs, output_index: int = 0) -> Metric:
    """A metric scoring outputs by their mean cosine similarity to `reference` (1.0 for the float model)."""
    return lambda outputs: cosine_fidelity(reference, outputs, output_index)


def accuracy_metric(labels: Sequence[np.ndarray] | np.ndarray, output_index: int = 0) -> Metric:
    """A metric scoring outputs by top-1 accuracy of `argmax(outputs[output_index], -1)` against `labels`."""
    flat = np.concatenate([np.asarray(y).reshape(-1) for y in labels]) if isinstance(labels, list) else labels

    def metric(outputs: Outputs) -> float:
        preds = np.concatenate([np.asarray(o[output_index]).argmax(-1).reshape(-1) for o in outputs])
        return float((preds == np.asarray(flat).reshape(-1)).mean())

    return metric


def _materialize(feeds: Iterable[Feed] | None, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    if feeds is None:
        return []
    out: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        out.append({k: np.asarray(v) for k, v in feed.items()})
        if limit is not None and len(out) >= limit:
            break
    return out


def _limit_samples(feeds: list[dict[str, np.ndarray]], num_samples: int | None) -> list[dict[str, np.ndarray]]:
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
            outs = session.run(None, _adapt(session, first))
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


def _ensure_node_names(model: onnx.ModelProto) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names.update(n.output[0] for n in model.graph.node if n.op_type == "Constant")
    return names


def _float_weight_input(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether the node's weight input (index 1; index 0 for Gather data) is a float constant."""
    inits = {i.name: i for i in model.graph.initializer}
    idx = 0 if node.op_type == "Gather" else 1
    if len(node.input) <= idx or node.input[idx] not in inits:
        return False
    return inits[node.input[idx]].data_type == TensorProto.FLOAT


def _size(path: str | Path) -> int:
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


def _classify(
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
        if quantized_test(node, by_name, producers):
            quantized.append({"node": node.name, "op_type": node.op_type})
        else:
            reason = reasons.get(node.name, "not quantized by ONNX Runtime's quantizer for this op/input")
            kept.append({"node": node.name, "op_type": node.op_type, "reason": reason})
    return quantized, kept


def _replaced(node: onnx.NodeProto, by_name: dict[str, onnx.NodeProto], _p: dict[str, onnx.NodeProto]) -> bool:
    same = by_name.get(node.name)
    return same is None or same.op_type != node.op_type


def _fed_by_dequantize(
    node: onnx.NodeProto, by_name: dict[str, onnx.NodeProto], producers: dict[str, onnx.NodeProto]
) -> bool:
    same = by_name.get(node.name)
    if same is None:
        return True
    return any(i in producers and producers[i].op_type == "DequantizeLinear" for i in same.input)


def _float_ops_summary(model: onnx.ModelProto, quantizable: set[str]) -> dict[str, int]:
    skip = {"Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Cast", "Slice", "Squeeze"}
    return {
        op: n
        for op, n in sorted(op_counts(model).items())
        if op not in quantizable and op not in skip and not op.startswith(("Quantize", "Dequantize", "Dynamic"))
    }


def _save(model: onnx.ModelProto, output_path: str | Path) -> None:
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output_path))


def _finish(
    decisions: dict[str, Any],
    model: onnx.ModelProto,
    input_path: Path,
    output_path: Path,
    verify_feeds: Sequence[Feed] | None,
    t0: float,
) -> dict[str, Any]:
    _save(model, output_path)
    decisions["verification"] = verify(output_path, verify_feeds)
    decisions["size_bytes"] = {"input": _size(input_path), "output": _size(output_path)}
    decisions["size_bytes"]["ratio"] = round(decisions["size_bytes"]["output"] / decisions["size_bytes"]["input"], 4)
    decisions["seconds"] = round(time.perf_counter() - t0, 2)
    return decisions


def _with_embeddings(
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


def _prepare(input_path: Path, tmp: Path, fusion: Fusion, run_preprocess: bool) -> tuple[Path, dict[str, Any]]:
    if not run_preprocess:
        model = onnx.load(str(input_path))
        _ensure_node_names(model)
        path = tmp / "input.onnx"
        onnx.save(model, str(path))
        return path, {"pre_process": "skipped"}
    path = tmp / "pre.onnx"
    info = preprocess(input_path, path, fusion=fusion)
    model = onnx.load(str(path))
    _ensure_node_names(model)
    onnx.save(model, str(path))
    return path, info


# ---------------------------------------------------------------------------------------------------------------
# Dynamic
# ---------------------------------------------------------------------------------------------------------------

DYNAMIC_OP_TYPES = ("MatMul", "Attention", "EmbedLayerNormalization", "Gather", "Conv")


def quantize_dynamic(
    input_path: str | Path,
    output_path: str | Path,
    *,
    weight_dtype: IntDtype = "int8",
    per_channel: bool = True,
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    fusion: Fusion = "auto",
    preprocess_model: bool = True,
    eval_feeds: Iterable[Feed] | None = None,
    metric: Metric | None = None,
    max_drop: float | None = None,
    max_fallback: int | None = None,
) -> dict[str, Any]:
    """Dynamic int8 quantization: int8/uint8 weights, uint8 activations quantized per batch at run time.

    Jacob et al., 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
    Inference", https://arxiv.org/abs/1712.05877. The model first goes through ONNX Runtime's pre-processing
    (`ort_preprocess`: offline basic graph optimization and shape inference); LayerNorm, Softmax, GELU and
    residual adds stay in float. With `fusion="full"` ONNX Runtime's transformer fusions run first, so weights
    are quantized inside `QAttention` and `QEmbedLayerNormalization`; measured on MiniLM (ORT 1.32, AVX-512
    VNNI, one thread, batch 8 x 128) that graph is 12% slower than the unfused one (132 vs 117 ms; same
    fidelity, 0.993), whose MatMuls ONNX Runtime fuses at load time into `DynamicQuantizeMatMul` /
    `MatMulIntegerToFloat` anyway, so "auto" means no transformer fusion here.
    Per-channel weight scales are the default: on MiniLM they lift cosine fidelity from 0.963 to 0.993 at the
    same size, because a few output channels of the feed-forward weights have outliers that a per-tensor scale
    spends most of the int8 range on.

    Args:
        input_path: float ONNX model.
        output_path: where the quantized model is written.
        weight_dtype: storage type of weights, "int8" (symmetric) or "uint8".
        per_channel: one scale per output channel (recommended) instead of per tensor.
        reduce_range: 7-bit weights, for CPUs without VNNI where u8s8 products may saturate.
        op_types: op types to quantize; default `DYNAMIC_OP_TYPES` (Gemm has no dynamic int8 kernel).
        exclude: node names, op types or glob patterns of nodes to keep in float (names after fusion; the
            decisions list the quantizable nodes by name).
        fusion: transformer fusion before quantizing, see `ort_preprocess.Fusion`; "auto": none (faster here).
        preprocess_model: run fusion and `quant_pre_process` (shape inference, basic graph optimization).
        eval_feeds: feeds for the accuracy guard (and the verification run).
        metric: higher-is-better score of the outputs on `eval_feeds`; default cosine fidelity to float.
        max_drop: with `eval_feeds`, the largest allowed metric drop; the most sensitive nodes go back to
            float until it holds.
        max_fallback: most nodes the guard may return to float.

    Returns:
        Decisions: `quantized` and `kept_float` nodes (with reasons), `float_ops` (op types this mode leaves in
        float), `settings`, `preprocess`, `guard`, `verification`, `size_bytes`, `seconds`.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    t0 = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    feeds = _materialize(eval_feeds)
    op_list = list(op_types or DYNAMIC_OP_TYPES)
    wtype = QuantType.QInt8 if weight_dtype == "int8" else QuantType.QUInt8
    settings: dict[str, Any] = {
        "weight_dtype": weight_dtype,
        "activation_dtype": "uint8 (dynamic, per tensor)",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "op_types": op_list,
        "fusion": fusion,
    }
    with tempfile.TemporaryDirectory(prefix="deepopt-dyn-") as tmp:
        tmp_dir = Path(tmp)
        applied_fusion: Fusion = "none" if fusion == "auto" else fusion
        settings["fusion"] = applied_fusion
        src_path, pre_info = _prepare(input_path, tmp_dir, applied_fusion, preprocess_model)
        src = onnx.load(str(src_path))
        user_nodes, user_ops, unmatched = resolve_exclude(src, exclude)
        reasons: dict[str, str] = dict.fromkeys(user_nodes, "excluded by the user")
        candidates = [n for n in src.graph.node if n.op_type in op_list]
        for node in candidates:
            if node.name in reasons:
                continue
            if node.op_type in ("MatMul", "Gather", "Conv") and not _float_weight_input(src, node):
                reasons[node.name] = "no constant float weight (activation x activation or non-float data)"
        quantizable = [n.name for n in candidates if n.name not in reasons]
        gemms = [n for n in src.graph.node if n.op_type == "Gemm"]
        for node in gemms:
            reasons.setdefault(node.name, "Gemm has no dynamic int8 kernel in ONNX Runtime; use mode=static")

        def build(extra: frozenset[str]) -> onnx.ModelProto:
            out = tmp_dir / "dyn.onnx"
            ort_quantize_dynamic(
                str(src_path),
                str(out),
                op_types_to_quantize=[t for t in op_list if t not in user_ops],
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=wtype,
                nodes_to_exclude=sorted(user_nodes | extra),
                extra_options={"DefaultTensorType": TensorProto.FLOAT, "MatMulConstBOnly": True},
            )
            return onnx.load(str(out))

        full = build(frozenset())
        guard_report = None
        if feeds and max_drop is not None:
            q_names = [n for n in quantizable if _replaced(_node(src, n), {m.name: m for m in full.graph.node}, {})]
            full, guard_report = accuracy_guard(
                build, q_names, src_path, feeds, metric, max_drop, max_fallback=max_fallback, full_model=full
            )
            for name in guard_report["fallback_nodes"]:
                reasons[name] = f"accuracy guard: sensitivity {guard_report['sensitivity'][name]:.5f}"
        quantized, kept = _classify(src, full, candidates + gemms, reasons, _replaced)
        decisions: dict[str, Any] = {
            "mode": "dynamic",
            "settings": settings,
            "preprocess": pre_info,
            "quantized": quantized,
            "kept_float": kept,
            "float_ops": _float_ops_summary(src, set(op_list)),
            "exclude_unmatched": unmatched,
            "guard": guard_report,
        }
        return _finish(decisions, full, input_path, output_path, feeds[:1] or None, t0)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
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
# Static
# ---------------------------------------------------------------------------------------------------------------

STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")


class _FeedReader:
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


def _calibrate(
    model_path: Path,
    tmp: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    op_types: Sequence[str],
    method: CalibrationMethod,
    percentile: float,
    symmetric: bool,
) -> tuple[Path, Any]:
    """Collects activation ranges one feed at a time (so feeds of different lengths are fine for the
    histogram methods) and saves them as an ONNX Runtime calibration cache."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import create_calibrator, save_tensors_data

    ort_method = {"minmax": OrtMethod.MinMax, "entropy": OrtMethod.Entropy, "percentile": OrtMethod.Percentile}[method]
    extra: dict[str, Any] = {"symmetric": symmetric}
    if method == "percentile":
        extra["percentile"] = percentile
    if method == "entropy":
        extra.update(num_bins=512, num_quantized_bins=128)
    calibrator = create_calibrator(
        model_path,
        list(op_types),
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=ort_method,
        extra_options=extra,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
        for feed in feeds:
            calibrator.collect_data(_FeedReader([feed]))
        tensors = calibrator.compute_data()
    cache = tmp / "calibration.json"
    save_tensors_data(tensors, cache)
    del calibrator
    return cache, ort_method


def _restore_float_nodes(qdq: onnx.ModelProto, float_model: onnx.ModelProto, names: frozenset[str]) -> onnx.ModelProto:
    """The QDQ model with the named nodes reading their original float inputs again (their QDQ pairs and
    quantized weights dropped when nothing else uses them)."""
    if not names:
        return qdq
    model = copy.deepcopy(qdq)
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    have_inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in names and node.name in float_nodes:
            original = float_nodes[node.name]
            del node.input[:]
            node.input.extend(original.input)
            for name in original.input:
                if name in float_inits and name not in have_inits:
                    model.graph.initializer.append(float_inits[name])
                    have_inits.add(name)
    _prune_dead(model)
    return model


def _float_bypass(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Rewires consumers that are not quantized nodes (residual Add/SkipLayerNorm, Shape, LayerNorm...) from an
    activation's DequantizeLinear output back to the float activation, in place; returns how many inputs.

    ONNX Runtime's QDQ quantizer replaces a quantized tensor for *all* its consumers, so without this the
    residual stream of a transformer carries int8 rounding error from every layer."""
    producers = {o: n for n in model.graph.node for o in n.output}
    float_of: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            q = producers.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                float_of[node.output[0]] = q.input[0]
    graph_outputs = {o.name for o in model.graph.output}
    changed = 0
    for node in model.graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of and name not in graph_outputs:
                node.input[i] = float_of[name]
                changed += 1
    _prune_dead(model)
    return changed


def lower_qdq_matmuls(model: onnx.ModelProto) -> list[str]:
    """Replaces `MatMul(DQ(Q(x)), DQ(W_int8))` by `MatMulIntegerToFloat(Q(x), W_int8, ...)`, in place.

    ONNX Runtime 1.32's CPU graph optimizer turns a MatMul whose weight has a per-channel DequantizeLinear into
    a weight-only `MatMulNBits` (float activations), discarding the int8 activation path and its speed; the
    contrib op `com.microsoft.MatMulIntegerToFloat` (what dynamic quantization uses) runs u8s8 integer
    products with per-column weight scales and a float output. Returns the names of the lowered nodes.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    lowered: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        a_dq, b_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if a_dq is None or b_dq is None or a_dq.op_type != "DequantizeLinear" or b_dq.op_type != "DequantizeLinear":
            new_nodes.append(node)
            continue
        a_q = producers.get(a_dq.input[0])
        w = inits.get(b_dq.input[0])
        axis = next((a.i for a in b_dq.attribute if a.name == "axis"), 1)
        a_scale = inits.get(a_dq.input[1])
        b_scale = inits.get(b_dq.input[1])
        if (
            a_q is None
            or a_q.op_type != "QuantizeLinear"
            or w is None
            or len(w.dims) != 2
            or a_scale is None
            or b_scale is None
            or len(a_scale.dims) > 0
            or (len(b_scale.dims) == 1 and axis not in (1, -1))
            or any(a.name == "block_size" for a in b_dq.attribute)
        ):
            new_nodes.append(node)
            continue
        inputs = [a_dq.input[0], b_dq.input[0], a_dq.input[1], b_dq.input[1]]
        inputs.append(a_dq.input[2] if len(a_dq.input) > 2 else "")
        inputs.append(b_dq.input[2] if len(b_dq.input) > 2 else "")
        while inputs and not inputs[-1]:
            inputs.pop()
        new_nodes.append(
            helper.make_node("MatMulIntegerToFloat", inputs, list(node.output), name=node.name, domain="com.microsoft")
        )
        lowered.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    if lowered and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _prune_dead(model)
    return lowered


def _prune_dead(model: onnx.ModelProto) -> None:
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


def quantize_static(
    input_path: str | Path,
    output_path: str | Path,
    calibration: Iterable[Feed],
    *,
    calibration_method: CalibrationMethod = "percentile",
    percentile: float = 99.999,
    quant_format: Literal["qdq", "qoperator"] = "qdq",
    per_channel: bool = True,
    symmetric: bool = False,
    activation_dtype: IntDtype = "uint8",
    weight_dtype: IntDtype = "int8",
    num_samples: int | None = 64,
    op_types: Sequence[str] | None = None,
    quantize_activation_matmuls: bool = False,
    quantize_embeddings: bool = True,
    float_residual: bool = True,
    lower_matmuls: bool = True,
    exclude: Sequence[str] = (),
    fusion: Fusion = "auto",
    preprocess_model: bool = True,
    eval_feeds: Iterable[Feed] | None = None,
    metric: Metric | None = None,
    max_drop: float | None = None,
    max_fallback: int | None = None,
) -> dict[str, Any]:
    """Static int8 quantization of weights and activations with ranges calibrated on `calibration` data.

    Jacob et al., 2018 (https://arxiv.org/abs/1712.05877); calibration methods as compared by Wu et al., 2020,
    "Integer Quantization for Deep Learning Inference: Principles and Empirical Evaluation"
    (https://arxiv.org/abs/2004.09602): max (`minmax`), KL-divergence (`entropy`, Migacz 2017) and
    `percentile`; partial quantization of the most sensitive layers as in its section 4.3.

    What makes it accurate on transformers (MiniLM fidelity 0.364 for stock QDQ on all ops, 0.93 for stock
    QDQ on MatMuls): only the inputs of the weight-bearing ops (`MatMul` with a constant weight, `Gemm`,
    `Conv`) are quantized; LayerNorm, Softmax, residual Add, GELU and the activation x activation MatMuls of
    attention stay in float; weights are per-channel (symmetric int8); activations use calibrated
    ranges (uint8, asymmetric: u8s8 is the fast x86 path) clipped at a high percentile so a few outliers do
    not flatten the rest; the residual stream keeps reading float activations (only the quantized ops read
    the dequantized copies); and, given `eval_feeds`
    and `max_drop`, the few most sensitive nodes (typically the feed-forward output projections whose inputs
    carry the largest outliers) are kept in float.

    Ranges are collected one calibration feed at a time, so feeds of different sequence lengths work with
    the histogram methods (ONNX Runtime's `quantize_static` stacks all of them and needs equal shapes).

    Args:
        input_path: float ONNX model.
        output_path: where the quantized model is written.
        calibration: calibration feeds (batches or single samples).
        calibration_method: "minmax", "entropy" or "percentile".
        percentile: the percentile of |activation| kept in range, for "percentile".
        quant_format: "qdq" (QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime fuses into integer
            kernels) or "qoperator" (QLinearMatMul/QLinearConv... directly).
        per_channel: per-output-channel weight scales.
        symmetric: symmetric activation ranges (zero point 0); weights are always symmetric. Asymmetric is
            better after GELU (outputs >= -0.17): on MiniLM 0.993 vs 0.983 fidelity.
        activation_dtype: "uint8" (default) or "int8" activations. x86 CPUs run u8s8 products natively (VNNI);
            int8 activations (s8s8) run 3-6x slower there in ONNX Runtime 1.32 (415 vs 63 ms on MiniLM b8).
        weight_dtype: "int8" or "uint8" weights.
        num_samples: calibration rows used (the first ones; None: all).
        op_types: op types whose inputs are quantized; default: `STATIC_OP_TYPES` on transformers, every op
            type ONNX Runtime's QDQ quantizer supports otherwise (CNNs then stay in int8 between Convs).
        quantize_activation_matmuls: also quantize MatMuls of two activations (attention scores and
            context); off by default: they have no constant weight to shrink and cost fidelity.
        quantize_embeddings: store large embedding tables as int8 with per-row scales
            (`quantize_embeddings`); QDQ has no cheap form for them.
        float_residual: only quantized nodes read the dequantized activations; the residual stream, LayerNorm
            and shape ops keep reading the float tensor (`_float_bypass`).
        lower_matmuls: replace QDQ MatMul groups with `com.microsoft.MatMulIntegerToFloat` so ONNX Runtime's CPU
            provider runs them as u8s8 integer products (see `lower_qdq_matmuls`); off keeps a portable
            standard-ops QDQ model.
        exclude: node names, op types or glob patterns to keep in float.
        fusion: transformer fusion before quantizing. "auto": none (on MiniLM the offline-fused graph runs 8%
            slower once quantized: 125 vs 115 ms, same fidelity); "full" means "no_attention" here (the QDQ
            quantizer has no `Attention` support, so attention stays MatMuls it can quantize).
        preprocess_model: run fusion and `quant_pre_process` (shape inference, Conv+BN folding...).
        eval_feeds: feeds for the accuracy guard (and the verification run).
        metric: higher-is-better score of the outputs on `eval_feeds`; default cosine fidelity to float.
        max_drop: with `eval_feeds`, the largest allowed metric drop.
        max_fallback: most nodes the guard may return to float.

    Returns:
        Decisions as for `quantize_dynamic`, plus the calibration settings.
    """
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    t0 = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    calib = _limit_samples(_materialize(calibration), num_samples)
    if not calib:
        raise ValueError("static quantization needs calibration data")
    feeds = _materialize(eval_feeds)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    fmt = QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator
    settings: dict[str, Any] = {
        "calibration_method": calibration_method,
        "percentile": percentile if calibration_method == "percentile" else None,
        "quant_format": quant_format,
        "per_channel": per_channel,
        "symmetric_activations": symmetric,
        "activation_dtype": activation_dtype,
        "weight_dtype": weight_dtype,
        "num_samples": sum(min(len(v) for v in f.values()) for f in calib),
    }
    with tempfile.TemporaryDirectory(prefix="deepopt-static-") as tmp:
        tmp_dir = Path(tmp)
        applied_fusion: Fusion = {"auto": "none", "full": "no_attention"}.get(fusion, fusion)  # type: ignore[assignment]
        settings["fusion"] = applied_fusion
        ref_path, pre_info = _prepare(input_path, tmp_dir, applied_fusion, preprocess_model)
        src = onnx.load(str(ref_path))
        if op_types:
            op_list = list(op_types)
        elif looks_like_transformer(src):
            op_list = list(STATIC_OP_TYPES)
        else:  # CNNs: every op ONNX Runtime can run in int8, so activations stay int8 from Conv to Conv
            from onnxruntime.quantization.registry import QDQRegistry

            op_list = sorted(QDQRegistry) if quant_format == "qdq" else sorted(set(STATIC_OP_TYPES) | {"Relu"})
        settings["op_types"] = op_list
        user_nodes, user_ops, unmatched = resolve_exclude(src, exclude)
        src_path, embeddings = _with_embeddings(
            src, ref_path, user_nodes, quantize_embeddings and "Gather" not in user_ops
        )
        reasons: dict[str, str] = dict.fromkeys(user_nodes, "excluded by the user")
        candidates = [n for n in src.graph.node if n.op_type in op_list]
        act_x_act: set[str] = set()
        for node in candidates:
            if node.op_type in ("MatMul", "Gemm") and node.name not in reasons and not _float_weight_input(src, node):
                if quantize_activation_matmuls:
                    continue
                reasons[node.name] = "activation x activation (no constant weight): kept in float"
                act_x_act.add(node.name)
        calib = [_adapt_model(src, f) for f in calib]
        cache, ort_method = _calibrate(
            src_path,
            tmp_dir,
            calib,
            [t for t in op_list if t not in user_ops],
            calibration_method,
            percentile,
            symmetric,
        )
        extra_options: dict[str, Any] = {
            "MatMulConstBOnly": True,
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            "DefaultTensorType": TensorProto.FLOAT,
        }

        def quantize(excluded: frozenset[str]) -> onnx.ModelProto:
            out = tmp_dir / "static.onnx"
            ort_quantize_static(
                str(src_path),
                str(out),
                None,
                quant_format=fmt,
                op_types_to_quantize=[t for t in op_list if t not in user_ops],
                per_channel=per_channel,
                activation_type=qtype[activation_dtype],
                weight_type=qtype[weight_dtype],
                nodes_to_exclude=sorted(excluded),
                calibrate_method=ort_method,
                extra_options=extra_options,
                calibration_cache_path=cache,
            )
            return onnx.load(str(out))

        full = quantize(frozenset(user_nodes | act_x_act))
        quantized_test = _fed_by_dequantize if quant_format == "qdq" else _replaced
        by_name = {m.name: m for m in full.graph.node}
        producers = {o: m for m in full.graph.node for o in m.output}
        q_names = [n.name for n in candidates if n.name not in reasons and quantized_test(n, by_name, producers)]
        bypassed = _float_bypass(full, set(q_names)) if quant_format == "qdq" and float_residual else 0

        if quant_format == "qdq":

            def build(extra: frozenset[str]) -> onnx.ModelProto:
                return _restore_float_nodes(full, src, extra)
        else:

            def build(extra: frozenset[str]) -> onnx.ModelProto:
                return quantize(frozenset(user_nodes | act_x_act) | extra)

        guard_report = None
        if feeds and max_drop is not None:
            full, guard_report = accuracy_guard(
                build, q_names, ref_path, feeds, metric, max_drop, max_fallback=max_fallback, full_model=full
            )
            for name in guard_report["fallback_nodes"]:
                reasons[name] = f"accuracy guard: sensitivity {guard_report['sensitivity'][name]:.5f}"
        quantized, kept = _classify(src, full, candidates, reasons, quantized_test)
        lowered = lower_qdq_matmuls(full) if quant_format == "qdq" and lower_matmuls else []
        settings["float_residual_inputs"] = bypassed
        settings["lowered_to_MatMulIntegerToFloat"] = len(lowered)
        decisions: dict[str, Any] = {
            "mode": "static",
            "settings": settings,
            "preprocess": pre_info,
            "embeddings_int8": embeddings,
            "quantized": quantized,
            "kept_float": kept,
            "float_ops": _float_ops_summary(src, set(op_list)),
            "exclude_unmatched": unmatched,
            "guard": guard_report,
        }
        return _finish(decisions, full, input_path, output_path, feeds[:1] or calib[:1], t0)


def _adapt_model(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
# Weight-only
# ---------------------------------------------------------------------------------------------------------------

WeightOnlyAlgorithm = Literal["auto", "awq_clip", "rtn", "hqq", "gptq", "k_quant"]


def quantize_weight_only(
    input_path: str | Path,
    output_path: str | Path,
    *,
    bits: Literal[4, 8] = 4,
    block_size: int = 32,
    symmetric: bool = False,
    algorithm: WeightOnlyAlgorithm = "auto",
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None,
    calibration: Iterable[Feed] | None = None,
    num_samples: int | None = 32,
    quantize_embeddings: bool = True,
    exclude: Sequence[str] = (),
    fusion: Fusion = "auto",
    preprocess_model: bool = True,
    eval_feeds: Iterable[Feed] | None = None,
    metric: Metric | None = None,
    max_drop: float | None = None,
    max_fallback: int | None = None,
) -> dict[str, Any]:
    """Block-wise weight-only quantization of `MatMul` weights to 4 or 8 bits (`com.microsoft.MatMulNBits`).

    Each block of `block_size` consecutive input-channel weights of an output channel gets its own scale (and
    zero point unless `symmetric`); activations stay in float, and ONNX Runtime dequantizes on the fly (or, with
    `accuracy_level=4`, quantizes activations per block to int8 and uses integer dot products).

    Algorithms:
        * "awq_clip" (ours, the default when `calibration` is given): symmetric blocks whose clipping ratio is
          searched per block to minimize the weight error weighted by the mean square of the matching input
          channel on the calibration data, the clipping search of AWQ (Lin et al., 2023,
          https://arxiv.org/abs/2306.00978); without calibration, plain MSE. On MiniLM int4 g32: fidelity 0.975 at
          0.156x MatMul weight bytes, vs 0.967 (symmetric) / 0.975 at 0.160x (asymmetric) for round-to-nearest.
        * "auto": "awq_clip" with calibration data, else "rtn".
    and through `onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`:
        * "rtn": round to nearest with a min/max block range (`DefaultWeightOnlyQuantConfig`).
        * "hqq": Half-Quadratic Quantization, optimizes the zero points and scales of each block without data
          (Badri & Shaji, 2023, https://mobiusml.github.io/hqq_blog/); 4-bit only here.
        * "gptq": Frantar et al., 2022, https://arxiv.org/abs/2210.17323, corrects the rounding error of each
          column with the inverse Hessian of the layer inputs; needs `calibration`.
        * "k_quant": llama.cpp-style k-quants search of block scales.

    Args:
        input_path: float ONNX model.
        output_path: where the quantized model is written.
        bits: 4 or 8.
        block_size: weights per block along the input dimension (16, 32, 64, 128, ...).
        symmetric: symmetric blocks (no zero points).
        algorithm: see above.
        accuracy_level: `MatMulNBits` compute type: None/0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8.
        calibration: feeds for "awq_clip" and "gptq".
        num_samples: calibration rows for "awq_clip" and "gptq".
        quantize_embeddings: store large embedding tables as int8 with per-row scales.
        exclude: node names, op types or glob patterns to keep in float.
        fusion: transformer fusion before quantizing; "auto": none; "full" means "no_attention" (a fused
            `Attention` op would keep its packed QKV weight in float: only `MatMul` weights become
            `MatMulNBits`).
        preprocess_model: run fusion and `quant_pre_process`.
        eval_feeds, metric, max_drop, max_fallback: the accuracy guard, as for `quantize_dynamic`.

    Returns:
        Decisions as for `quantize_dynamic`, plus `matmul_weight_bytes` (float and quantized).
    """
    from onnxruntime.quantization import matmul_nbits_quantizer as mnb

    t0 = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if bits not in (4, 8):
        raise ValueError("bits must be 4 or 8")
    if algorithm == "auto":
        algorithm = "awq_clip" if calibration is not None else "rtn"
    if algorithm == "gptq" and calibration is None:
        raise ValueError("algorithm='gptq' needs calibration data")
    if algorithm == "hqq" and bits != 4:
        raise ValueError("hqq is 4-bit only here")
    feeds = _materialize(eval_feeds)
    settings: dict[str, Any] = {
        "bits": bits,
        "block_size": block_size,
        "symmetric": symmetric,
        "algorithm": algorithm,
        "accuracy_level": accuracy_level,
    }
    if algorithm == "awq_clip":
        settings["symmetric"] = True
    with tempfile.TemporaryDirectory(prefix="deepopt-wo-") as tmp:
        tmp_dir = Path(tmp)
        applied_fusion: Fusion = {"auto": "none", "full": "no_attention"}.get(fusion, fusion)  # type: ignore[assignment]
        settings["fusion"] = applied_fusion
        ref_path, pre_info = _prepare(input_path, tmp_dir, applied_fusion, preprocess_model)
        src = onnx.load(str(ref_path))
        user_nodes, user_ops, unmatched = resolve_exclude(src, exclude)
        src_path, embeddings = _with_embeddings(
            src, ref_path, user_nodes, quantize_embeddings and "Gather" not in user_ops
        )
        reasons: dict[str, str] = dict.fromkeys(user_nodes, "excluded by the user")
        candidates = [n for n in src.graph.node if n.op_type == "MatMul"]
        inits = {i.name: i for i in src.graph.initializer}
        for node in candidates:
            if node.name in reasons:
                continue
            w = inits.get(node.input[1])
            if w is None or w.data_type != TensorProto.FLOAT:
                reasons[node.name] = "no constant float weight (activation x activation)"
            elif len(w.dims) != 2:
                reasons[node.name] = f"weight of rank {len(w.dims)}; MatMulNBits needs a 2-D weight"
        calib = _limit_samples([_adapt_model(src, f) for f in _materialize(calibration)], num_samples)

        importance = None
        if algorithm == "awq_clip" and calib:
            inits_now = {i.name for i in src.graph.initializer}
            names = sorted({n.input[0] for n in candidates if n.input[1] in inits_now})
            importance = activation_importance(src, calib, names)
        settings["importance_from_calibration"] = importance is not None

        def build(extra: frozenset[str]) -> onnx.ModelProto:
            excluded = sorted(user_nodes | extra)
            model = onnx.load(str(src_path))
            if algorithm == "awq_clip":
                return _awq_clip_matmul_nbits(model, bits, block_size, importance, set(excluded))
            if algorithm == "hqq":
                config: Any = mnb.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
            elif algorithm == "gptq":
                config = mnb.GPTQWeightOnlyQuantConfig(
                    calibration_data_reader=_FeedReader(calib), block_size=128, percdamp=0.01, actorder=False
                )
            elif algorithm == "k_quant":
                config = mnb.KQuantWeightOnlyQuantConfig()
            else:
                config = mnb.DefaultWeightOnlyQuantConfig(
                    block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level, bits=bits
                )
            if algorithm in ("gptq", "k_quant"):
                config.customized_weight_config = None
            quantizer = mnb.MatMulNBitsQuantizer(
                model,
                bits=bits,
                block_size=block_size,
                is_symmetric=symmetric,
                accuracy_level=accuracy_level,
                nodes_to_exclude=excluded,
                algo_config=config,
            )
            with _quiet("onnxruntime"):
                quantizer.process()
            out = quantizer.model.model
            if algorithm in ("gptq", "k_quant"):
                out = _as_model(out)
            return out

        full = build(frozenset())
        guard_report = None
        if feeds and max_drop is not None:
            by_name = {m.name: m for m in full.graph.node}
            q_names = [n.name for n in candidates if n.name not in reasons and _replaced(n, by_name, {})]
            full, guard_report = accuracy_guard(
                build, q_names, ref_path, feeds, metric, max_drop, max_fallback=max_fallback, full_model=full
            )
            for name in guard_report["fallback_nodes"]:
                reasons[name] = f"accuracy guard: sensitivity {guard_report['sensitivity'][name]:.5f}"
        quantized, kept = _classify(src, full, candidates, reasons, _replaced)
        decisions: dict[str, Any] = {
            "mode": "weight_only",
            "settings": settings,
            "preprocess": pre_info,
            "embeddings_int8": embeddings,
            "quantized": quantized,
            "kept_float": kept,
            "float_ops": _float_ops_summary(src, {"MatMul"}),
            "exclude_unmatched": unmatched,
            "guard": guard_report,
            "matmul_weight_bytes": _matmul_weight_bytes(src, full),
        }
        return _finish(decisions, full, input_path, output_path, feeds[:1] or calib[:1] or None, t0)


def activation_importance(
    model: onnx.ModelProto, feeds: Sequence[Feed], inputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """Mean square of each named tensor's last-axis channels over the feeds (rows of all batches and positions)."""
    augmented = copy.deepcopy(model)
    existing = {o.name for o in augmented.graph.output}
    for name in inputs:
        if name not in existing:
            augmented.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = make_session(augmented)
    out_names = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    counts: Counter[str] = Counter()
    for feed in feeds:
        values = dict(zip(out_names, session.run(None, _adapt(session, feed)), strict=True))
        for name in inputs:
            x = np.asarray(values[name], dtype=np.float64)
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + (x**2).sum(0)
            counts[name] += len(x)
    return {k: v / max(counts[k], 1) for k, v in sums.items()}


def _blockwise_symmetric(
    w: np.ndarray, block: int, bits: int, importance: np.ndarray | None, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block-wise quantization of a (K, N) weight in MatMulNBits layout, with the clipping ratio of each
    block chosen to minimize the importance-weighted squared error. Returns (packed B, scales)."""
    k, n = w.shape
    blocks = -(-k // block)
    wp = np.pad(w, ((0, blocks * block - k), (0, 0))).T.reshape(n, blocks, block)
    imp = None
    if importance is not None:
        imp = np.pad(importance, (0, blocks * block - k)).reshape(1, blocks, block)
    qmax = 2 ** (bits - 1)
    amax = np.abs(wp).max(-1, keepdims=True) + 1e-12
    best_err = np.full(amax.shape, np.inf)
    best_scale = amax / qmax
    for ratio in grid:
        scale = amax * ratio / qmax
        err = (np.clip(np.rint(wp / scale), -qmax, qmax - 1) * scale - wp) ** 2
        err = (err * imp).sum(-1, keepdims=True) if imp is not None else err.sum(-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    q = (np.clip(np.rint(wp / best_scale), -qmax, qmax - 1) + qmax).astype(np.uint8)  # zero point 2^(bits-1)
    packed = q[..., 0::2] | (q[..., 1::2] << 4) if bits == 4 else q
    return np.ascontiguousarray(packed), best_scale.reshape(n * blocks).astype(np.float32)


def _awq_clip_matmul_nbits(
    model: onnx.ModelProto,
    bits: int,
    block_size: int,
    importance: Mapping[str, np.ndarray] | None,
    excluded: set[str] | frozenset[str],
) -> onnx.ModelProto:
    """Replaces every MatMul with a 2-D float constant weight (not excluded) by a symmetric MatMulNBits."""
    model = copy.deepcopy(model)
    inits = {i.name: i for i in model.graph.initializer}
    grid = np.linspace(0.8, 1.15, 15)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if w is None or node.name in excluded or w.data_type != TensorProto.FLOAT or len(w.dims) != 2:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(w).astype(np.float32)
        k, n = weight.shape
        imp = importance.get(node.input[0]) if importance else None
        packed, scales = _blockwise_symmetric(weight, block_size, bits, imp, grid)
        base = f"{node.input[1]}_Q{bits}"
        model.graph.initializer.extend(
            [numpy_helper.from_array(packed, base), numpy_helper.from_array(scales, base + "_scales")]
        )
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], base, base + "_scales"],
                list(node.output),
                name=f"{node.name}_Q{bits}",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=bits,
                block_size=block_size,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _prune_dead(model)
    return model


def _as_model(model: Any) -> onnx.ModelProto:
    while not isinstance(model, onnx.ModelProto):
        model = model.model
    return model


@contextlib.contextmanager
def _quiet(name: str):  # noqa: ANN202
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _matmul_weight_bytes(src: onnx.ModelProto, out: onnx.ModelProto) -> dict[str, Any]:
    """Bytes of the constant MatMul weights in float (`src`) and after quantization (`out`: packed weights,
    scales and zero points of MatMulNBits, or the float weights of MatMuls left alone)."""
    src_inits = {i.name: i for i in src.graph.initializer}
    float_bytes = sum(
        len(src_inits[n.input[1]].raw_data) or np.prod(src_inits[n.input[1]].dims) * 4
        for n in src.graph.node
        if n.op_type == "MatMul" and n.input[1] in src_inits
    )
    out_inits = {i.name: i for i in out.graph.initializer}
    quant = 0
    for node in out.graph.node:
        if node.op_type == "MatMulNBits":
            quant += sum(numpy_helper.to_array(out_inits[i]).nbytes for i in node.input[1:4] if i in out_inits)
        elif node.op_type == "MatMul" and node.input[1] in out_inits:
            quant += numpy_helper.to_array(out_inits[node.input[1]]).nbytes
    return {"float": int(float_bytes), "quantized": int(quant), "ratio": round(quant / max(float_bytes, 1), 4)}


# ---------------------------------------------------------------------------------------------------------------
# float16 / bfloat16
# ---------------------------------------------------------------------------------------------------------------

# Ops whose float inputs must stay float32 (shape arithmetic, control, ops with float32-only attributes/inputs).
_KEEP_FLOAT32_OPS = frozenset(
    {
        "Range", "Resize", "Upsample", "RoiAlign", "NonMaxSuppression", "TopK", "RandomUniform",
        "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "EyeLike", "ArrayFeatureExtractor",
        "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer", "FeatureVectorizer", "Imputer",
        "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder", "SVMClassifier",
        "SVMRegressor", "Scaler", "TreeEnsembleClassifier", "TreeEnsembleRegressor", "ZipMap", "If", "Loop",
        "Scan",
    }
)  # fmt: skip


def convert_float(
    input_path: str | Path,
    output_path: str | Path,
    *,
    dtype: Literal["fp16", "bf16"] = "fp16",
    keep_io_types: bool = True,
    exclude: Sequence[str] = (),
    eval_feeds: Iterable[Feed] | None = None,
    max_iterations: int = 20,
) -> dict[str, Any]:
    """Converts float32 weights and computation to float16 or bfloat16.

    Mixed precision as in Micikevicius et al., 2018 (https://arxiv.org/abs/1710.03740) for float16 and
    Kalamkar et al., 2019 (https://arxiv.org/abs/1905.12322) for bfloat16: weights are stored in the 16-bit
    type, ops compute in it where ONNX Runtime's CPU provider has a kernel, and the rest compute in float32
    behind `Cast` nodes (weights stay 16-bit on disk either way).

    * "fp16": ONNX Runtime's float16 converter (`onnxruntime.transformers.float16`, the onnxconverter-common
      algorithm) with its default block list; the CPU provider runs ops without float16 kernels in float32 by
      inserting casts itself.
    * "bf16": our converter. The CPU provider has bfloat16 kernels for very few ops and inserts no casts for
      them, so the model is converted, loaded, and every op type ONNX Runtime reports without a bfloat16 CPU
      kernel is moved back to float32 compute (with Casts), until it loads; those op types are listed in the
      decisions (`no_cpu_kernel`). Most compute then runs in float32 on CPU: bf16 mainly halves the file.

    Args:
        input_path: float32 ONNX model.
        output_path: where the converted model is written.
        dtype: "fp16" or "bf16".
        keep_io_types: keep graph inputs and outputs in float32 (Casts at the edges).
        exclude: node names, op types or glob patterns to keep in float32.
        eval_feeds: feeds for the verification run.
        max_iterations: most load-and-block rounds for "bf16".

    Returns:
        Decisions: `low_precision_nodes` count, `kept_float32` (op types and why), `no_cpu_kernel`,
        `verification`, `size_bytes`, `seconds`.
    """
    t0 = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    feeds = _materialize(eval_feeds, limit=1)
    model = onnx.load(str(input_path))
    _ensure_node_names(model)
    user_nodes, user_ops, unmatched = resolve_exclude(model, exclude)
    kept: dict[str, str] = {}
    no_kernel: list[str] = []
    if dtype == "fp16":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        block_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | user_ops)
        with _quiet("onnxruntime"):
            out = convert_float_to_float16(
                copy.deepcopy(model),
                keep_io_types=keep_io_types,
                op_block_list=block_ops,
                node_block_list=sorted(user_nodes),
            )
        present = set(op_counts(model))
        for op in sorted(present & set(block_ops)):
            kept[op] = "excluded by the user" if op in user_ops else "float16 converter block list (float32 only)"
    else:
        blocked_ops = set(user_ops) | (_KEEP_FLOAT32_OPS & set(op_counts(model)))
        for op in blocked_ops:
            kept[op] = "excluded by the user" if op in user_ops else "float32-only inputs/attributes"
        out = _convert_low_precision(model, TensorProto.BFLOAT16, blocked_ops, user_nodes, keep_io_types)
        for _ in range(max_iterations):
            check = verify(out)
            missing = {m["op_type"] for m in check.get("ops_without_cpu_kernel", [])}
            rejecting = {m["op_type"] for m in check.get("ops_rejecting_type", [])}
            if check.get("runs_on_cpu") or not (missing or rejecting):
                break
            present = set(op_counts(model))
            for op in sorted((rejecting & present) - blocked_ops):
                no_kernel.append(op)
                kept[op] = "its ONNX schema at this opset does not accept bfloat16: computes in float32 behind Casts"
            blocked_ops |= rejecting & present
            if not missing:
                out = _convert_low_precision(model, TensorProto.BFLOAT16, blocked_ops, user_nodes, keep_io_types)
                continue
            direct = (missing & present) - blocked_ops
            for op in sorted(direct):
                no_kernel.append(op)
                kept[op] = "no bfloat16 kernel in ONNX Runtime's CPU provider: computes in float32 behind Casts"
            if not direct:
                # The failing node came from a function op that ONNX Runtime expanded for lack of a bfloat16
                # kernel (Softmax -> ReduceMax...): block the function ops still in bfloat16.
                expanded = {op for op in present - blocked_ops if _has_function(op, model)}
                if not expanded:
                    break
                for op in sorted(expanded):
                    no_kernel.append(op)
                    kept[op] = (
                        "no bfloat16 kernel in ONNX Runtime's CPU provider (its function expansion has none "
                        f"either: {sorted(missing)}): computes in float32 behind Casts"
                    )
                direct = expanded
            blocked_ops |= direct
            out = _convert_low_precision(model, TensorProto.BFLOAT16, blocked_ops, user_nodes, keep_io_types)
    low_type = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16
    decisions: dict[str, Any] = {
        "mode": dtype,
        "settings": {"dtype": dtype, "keep_io_types": keep_io_types},
        "low_precision_initializers": sum(1 for i in out.graph.initializer if i.data_type == low_type),
        "kept_float32": [{"op_type": op, "reason": why} for op, why in sorted(kept.items())],
        "kept_float32_nodes": sorted(user_nodes),
        "no_cpu_kernel": no_kernel,
        "exclude_unmatched": unmatched,
    }
    return _finish(decisions, out, input_path, output_path, feeds or None, t0)


def _has_function(op_type: str, model: onnx.ModelProto) -> bool:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except Exception:
        return False
    return bool(getattr(schema, "has_function", False) or getattr(schema, "has_context_dependent_function", False))


def _convert_low_precision(
    source: onnx.ModelProto,
    low: int,
    blocked_ops: set[str],
    blocked_nodes: set[str],
    keep_io_types: bool,
) -> onnx.ModelProto:
    """Converts float32 tensors to `low` (FLOAT16/BFLOAT16): float initializers and Constants are stored in
    `low`; nodes compute in `low` unless their op type or name is blocked, in which case their float inputs
    are cast to float32. Casts are inserted wherever a tensor's precision and its consumer's differ."""
    model = copy.deepcopy(source)
    inferred = onnx.shape_inference.infer_shapes(model)
    float_tensors = {
        vi.name
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            float_tensors.add(init.name)
            array = numpy_helper.to_array(init)
            init.CopyFrom(_low_tensor(array, low, init.name))
    low_tensors = {i.name for i in graph.initializer if i.data_type == low}

    graph_inputs = {i.name for i in graph.input}
    for inp in graph.input:
        if inp.name in float_tensors and not keep_io_types:
            inp.type.tensor_type.elem_type = low
            low_tensors.add(inp.name)

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'f32' if to == TensorProto.FLOAT else 'low'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}_cast", to=to))
            casts[key] = out
        return casts[key]

    for node in graph.node:
        is_low = node.op_type not in blocked_ops and node.name not in blocked_nodes
        if node.op_type == "Constant" and is_low:
            attr = node.attribute[0]
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(_low_tensor(numpy_helper.to_array(attr.t), low, attr.t.name))
                low_tensors.update(node.output)
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if not name or name not in float_tensors and name not in low_tensors:
                continue
            if is_low and name not in low_tensors and name in float_tensors:
                node.input[i] = cast(name, low)
            elif not is_low and name in low_tensors:
                node.input[i] = cast(name, TensorProto.FLOAT)
        if is_low:
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to" and attr.i == TensorProto.FLOAT:
                        attr.i = low
            for attr in node.attribute:
                if node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_low_tensor(numpy_helper.to_array(attr.t), low, attr.t.name))
            low_tensors.update(o for o in node.output if o in float_tensors)
        new_nodes.append(node)

    for out in graph.output:
        if out.name in low_tensors:
            if keep_io_types and out.name not in graph_inputs:
                renamed = out.name + "__low"
                for node in new_nodes:
                    for j, o in enumerate(node.output):
                        if o == out.name:
                            node.output[j] = renamed
                    for j, i in enumerate(node.input):
                        if i == out.name:
                            node.input[j] = renamed
                new_nodes.append(
                    helper.make_node("Cast", [renamed], [out.name], name=f"{out.name}_cast_out", to=TensorProto.FLOAT)
                )
            else:
                out.type.tensor_type.elem_type = low
    del graph.node[:]
    graph.node.extend(_topological(new_nodes, graph))
    del graph.value_info[:]
    return model


def _low_tensor(array: np.ndarray, low: int, name: str) -> onnx.TensorProto:
    if low == TensorProto.FLOAT16:
        return numpy_helper.from_array(array.astype(np.float16), name)
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    tensor = helper.make_tensor(name, TensorProto.BFLOAT16, list(array.shape), rounded.tobytes(), raw=True)
    return tensor


def _topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    remaining = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while remaining:
        progress = False
        rest = []
        for node in remaining:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:  # outer-scope names of subgraphs, or a cycle: keep the given order
            ordered.extend(rest)
            break
        remaining = rest
    return ordered


__all__ = [
    "DYNAMIC_OP_TYPES",
    "STATIC_OP_TYPES",
    "activation_importance",
    "lower_qdq_matmuls",
    "quantize_embeddings",
    "accuracy_guard",
    "accuracy_metric",
    "convert_float",
    "cosine_fidelity",
    "fidelity_metric",
    "make_session",
    "quantize_dynamic",
    "quantize_static",
    "quantize_weight_only",
    "resolve_exclude",
    "run_outputs",
    "verify",
]
