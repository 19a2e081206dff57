"""Dynamic int8 quantization of ONNX models: int8/uint8 weights, activations quantized per batch at run time."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from deepopt_core.passes.quantize.ort_common import (
    Feed,
    IntDtype,
    Metric,
    accuracy_guard,
    classify_nodes,
    find_node,
    finish,
    float_ops_summary,
    gemm_to_matmul,
    has_float_weight,
    materialize,
    prepare_input,
    resolve_exclude,
    was_replaced,
)
from deepopt_core.passes.quantize.ort_preprocess import Fusion, looks_like_transformer

DYNAMIC_OP_TYPES = ("MatMul", "Attention", "EmbedLayerNormalization", "Gather", "Conv")


def quantize_dynamic(
    input_path: str | Path,
    output_path: str | Path,
    *,
    weight_dtype: IntDtype = "int8",
    per_channel: bool | None = None,
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    fusion: Fusion = "auto",
    preprocess_model: bool = True,
    gemm_as_matmul: bool = True,
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
    Per-channel weight scales are the default on transformers: on MiniLM they lift cosine fidelity from 0.963 to
    0.993 at the same size, because a few output channels of the feed-forward weights have outliers that a
    per-tensor scale spends most of the int8 range on; on other models (a digits MLP) per tensor measured better
    (0.9995 against 0.997), so it is their default.

    Args:
        input_path: float ONNX model.
        output_path: where the quantized model is written.
        weight_dtype: storage type of weights, "int8" (symmetric) or "uint8".
        per_channel: one scale per output channel instead of per tensor; None: per channel on transformers
            (`ort_preprocess.looks_like_transformer`), per tensor otherwise.
        reduce_range: 7-bit weights, for CPUs without VNNI where u8s8 products may saturate.
        op_types: op types to quantize; default `DYNAMIC_OP_TYPES` (Gemm has no dynamic int8 kernel).
        exclude: node names, op types or glob patterns of nodes to keep in float (names after fusion; the
            decisions list the quantizable nodes by name).
        fusion: transformer fusion before quantizing, see `ort_preprocess.Fusion`; "auto": none (faster here).
        preprocess_model: run fusion and `quant_pre_process` (shape inference, basic graph optimization).
        gemm_as_matmul: rewrite `Gemm` nodes with a constant weight as `MatMul` (keeping the Gemm's name) + `Add`
            after pre-processing. ONNX Runtime's quantizer converts Gemm itself, but under new node names, so
            that `exclude` and the accuracy guard could not name them.
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
    feeds = materialize(eval_feeds)
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
        src_path, pre_info = prepare_input(input_path, tmp_dir, applied_fusion, preprocess_model)
        src = onnx.load(str(src_path))
        if per_channel is None:
            fused = {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"}  # after fusion="full"
            per_channel = looks_like_transformer(src) or any(n.op_type in fused for n in src.graph.node)
            settings["per_channel"] = per_channel
        if gemm_as_matmul:
            settings["gemm_rewritten_as_matmul"] = gemm_to_matmul(src)
            if settings["gemm_rewritten_as_matmul"]:
                onnx.save(src, str(src_path))
        user_nodes, user_ops, unmatched = resolve_exclude(src, exclude)
        reasons: dict[str, str] = dict.fromkeys(user_nodes, "excluded by the user")
        candidates = [n for n in src.graph.node if n.op_type in op_list]
        for node in candidates:
            if node.name in reasons:
                continue
            if node.op_type in ("MatMul", "Gather", "Conv") and not has_float_weight(src, node):
                reasons[node.name] = "no constant float weight (activation x activation or non-float data)"
        quantizable = [n.name for n in candidates if n.name not in reasons]
        gemms = [n for n in src.graph.node if n.op_type == "Gemm"]
        for node in gemms:
            reasons.setdefault(node.name, "Gemm without a constant weight (or with transA/alpha) is not rewritten as "
                               "MatMul and has no dynamic int8 kernel; use mode=static")

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
            by_name = {m.name: m for m in full.graph.node}
            q_names = [n for n in quantizable if was_replaced(find_node(src, n), by_name, {})]
            full, guard_report = accuracy_guard(
                build, q_names, src_path, feeds, metric, max_drop, max_fallback=max_fallback, full_model=full
            )
            for name in guard_report["fallback_nodes"]:
                reasons[name] = f"accuracy guard: sensitivity {guard_report['sensitivity'][name]:.5f}"
        quantized, kept = classify_nodes(src, full, candidates + gemms, reasons, was_replaced)
        decisions: dict[str, Any] = {
            "mode": "dynamic",
            "settings": settings,
            "preprocess": pre_info,
            "quantized": quantized,
            "kept_float": kept,
            "float_ops": float_ops_summary(src, set(op_list)),
            "exclude_unmatched": unmatched,
            "guard": guard_report,
        }
        return finish(decisions, full, input_path, output_path, feeds[:1] or None, t0)

