"""float16 / bfloat16 conversion of ONNX models, with float32 inputs and outputs on request (`keep_io_types`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deepopt_core.passes.quantize.ort_common import (
    Feed,
    ensure_node_names,
    finish,
    materialize,
    quiet_logger,
    resolve_exclude,
    verify,
)
from deepopt_core.passes.quantize.ort_preprocess import op_counts

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
    feeds = materialize(eval_feeds, limit=1)
    model = onnx.load(str(input_path))
    ensure_node_names(model)
    user_nodes, user_ops, unmatched = resolve_exclude(model, exclude)
    kept: dict[str, str] = {}
    no_kernel: list[str] = []
    if dtype == "fp16":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        block_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | user_ops)
        with quiet_logger("onnxruntime"):
            out = convert_float_to_float16(
                copy.deepcopy(model),
                keep_io_types=keep_io_types,
                op_block_list=block_ops,
                node_block_list=sorted(user_nodes),
            )
        # The converter appends the Casts of `keep_io_types` at the end of the node list; ONNX Runtime runs that,
        # but the ONNX checker (and other runtimes) require topological order.
        ordered = _topological(list(out.graph.node), out.graph)
        del out.graph.node[:]
        out.graph.node.extend(ordered)
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
    return finish(decisions, out, input_path, output_path, feeds or None, t0)


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

