"""Static int8 quantization of ONNX models: weights and activations, with activation ranges calibrated on data
(QDQ format by default), accurate on transformers (float residual stream, integer MatMul kernels)."""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from deepopt_core.passes.quantize.ort_common import (
    Feed,
    FeedReader,
    IntDtype,
    Metric,
    accuracy_guard,
    adapt_to_model,
    classify_nodes,
    fed_by_dequantize,
    finish,
    float_ops_summary,
    has_float_weight,
    limit_samples,
    materialize,
    prepare_input,
    prune_dead_nodes,
    resolve_exclude,
    was_replaced,
    with_int8_embeddings,
)
from deepopt_core.passes.quantize.ort_preprocess import Fusion, looks_like_transformer

CalibrationMethod = Literal["minmax", "entropy", "percentile"]

STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")


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
            calibrator.collect_data(FeedReader([feed]))
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
    # A quantized bias comes back through a DequantizeLinear whose output keeps the float bias's name: the
    # restored node then reads the float initializer under another name.
    produced = {o for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in names and node.name in float_nodes:
            original = float_nodes[node.name]
            del node.input[:]
            for name in original.input:
                if name in float_inits:
                    stored = f"{name}_float" if name in produced else name
                    if stored not in have_inits:
                        tensor = copy.deepcopy(float_inits[name])
                        tensor.name = stored
                        model.graph.initializer.append(tensor)
                        have_inits.add(stored)
                    name = stored
                node.input.append(name)
    prune_dead_nodes(model)
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
    prune_dead_nodes(model)
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
    model.graph.node.extend(_fold_bias_adds(new_nodes, set(lowered), inits, {o.name for o in model.graph.output}))
    if lowered and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    prune_dead_nodes(model)
    return lowered


def _fold_bias_adds(nodes: list[onnx.NodeProto], lowered: set[str], inits: dict[str, onnx.TensorProto],
                    graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """Each lowered `MatMulIntegerToFloat` whose only consumer is `Add(out, bias)` with a constant 1-D float bias
    of its output width takes the bias as its 7th input, and the Add goes.

    Dynamic quantization gets this from ONNX Runtime's fusions (`DynamicQuantizeMatMul` / `MatMulIntegerToFloat`
    with bias); the lowered static graph did not, and on MiniLM its 36 separate bias Adds were an extra pass over
    every linear layer's output (5% of the run, measured with ONNX Runtime's profiler at batch 8 x 128)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped: set[int] = set()
    for node in nodes:
        if node.name not in lowered or node.op_type != "MatMulIntegerToFloat" or len(node.input) > 6:
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        weight = inits.get(node.input[1])
        if len(users) != 1 or out in graph_outputs or users[0].op_type != "Add" or weight is None:
            continue
        add = users[0]
        bias_name = add.input[1] if add.input[0] == out else add.input[0]
        bias = inits.get(bias_name)
        if bias is None or bias.data_type != TensorProto.FLOAT or list(bias.dims) != [weight.dims[1]]:
            continue
        inputs = list(node.input) + [""] * (6 - len(node.input)) + [bias_name]
        del node.input[:]
        node.input.extend(inputs)
        node.output[0] = add.output[0]
        dropped.add(id(add))
    return [n for n in nodes if id(n) not in dropped]


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
            and shape ops keep reading the float tensor (`_float_bypass`). Applies when only weight-bearing ops
            are quantized (`STATIC_OP_TYPES`, transformers).
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
    calib = limit_samples(materialize(calibration), num_samples)
    if not calib:
        raise ValueError("static quantization needs calibration data")
    feeds = materialize(eval_feeds)
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
        ref_path, pre_info = prepare_input(input_path, tmp_dir, applied_fusion, preprocess_model)
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
        src_path, embeddings = with_int8_embeddings(
            src, ref_path, user_nodes, quantize_embeddings and "Gather" not in user_ops
        )
        reasons: dict[str, str] = dict.fromkeys(user_nodes, "excluded by the user")
        candidates = [n for n in src.graph.node if n.op_type in op_list]
        act_x_act: set[str] = set()
        for node in candidates:
            if node.op_type in ("MatMul", "Gemm") and node.name not in reasons and not has_float_weight(src, node):
                if quantize_activation_matmuls:
                    continue
                reasons[node.name] = "activation x activation (no constant weight): kept in float"
                act_x_act.add(node.name)
        calib = [adapt_to_model(src, f) for f in calib]
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
        quantized_test = fed_by_dequantize if quant_format == "qdq" else was_replaced
        by_name = {m.name: m for m in full.graph.node}
        producers = {o: m for m in full.graph.node for o in m.output}
        q_names = [n.name for n in candidates if n.name not in reasons and quantized_test(n, by_name, producers)]
        # With only weight-bearing ops quantized, a tensor's float value is still in the graph next to its QDQ
        # copy. When other ops are quantized too (CNNs), ONNX Runtime folds activations such as Relu into the
        # QuantizeLinear after the op before them, and the tensor before that QuantizeLinear is pre-activation:
        # there, the float bypass and restoring single nodes to float would drop the activation.
        weight_ops_only = quant_format == "qdq" and set(op_list) <= set(STATIC_OP_TYPES)
        bypassed = _float_bypass(full, set(q_names)) if weight_ops_only and float_residual else 0

        if weight_ops_only:
            # Only weight-bearing ops are quantized: a node goes back to float by reading its float inputs again.
            def build(extra: frozenset[str]) -> onnx.ModelProto:
                return _restore_float_nodes(full, src, extra)
        else:
            # Other ops too (CNNs): ONNX Runtime folds activations such as Relu into the QuantizeLinear before
            # the next op, so a node cannot simply be rewired to float; quantize again without it (the
            # calibration cache makes that cheap).
            def build(extra: frozenset[str]) -> onnx.ModelProto:
                return quantize(frozenset(user_nodes | act_x_act) | extra)

        guard_report = None
        if feeds and max_drop is not None:
            full, guard_report = accuracy_guard(
                build, q_names, ref_path, feeds, metric, max_drop, max_fallback=max_fallback, full_model=full
            )
            for name in guard_report["fallback_nodes"]:
                reasons[name] = f"accuracy guard: sensitivity {guard_report['sensitivity'][name]:.5f}"
        quantized, kept = classify_nodes(src, full, candidates, reasons, quantized_test)
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
            "float_ops": float_ops_summary(src, set(op_list)),
            "exclude_unmatched": unmatched,
            "guard": guard_report,
        }
        return finish(decisions, full, input_path, output_path, feeds[:1] or calib[:1], t0)

