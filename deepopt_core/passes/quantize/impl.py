"""Dynamic int8 quantization: int8 weights, activations quantized on the fly (Jacob et al., 2018).

ONNX: ONNX Runtime's ``quantize_dynamic``. Its integer kernels cover MatMul, not Gemm, so Gemm nodes with a
constant weight are first rewritten as MatMul + Add (what ``torch.onnx.export`` emits for ``nn.Linear``).
Conv stays float with int8 weights (ONNX Runtime's CPU ConvInteger only takes uint8 weights).

PyTorch: ``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear`` for eager modules (Hugging Face), TorchScript
graph-mode ``quantize_dynamic_jit`` for ScriptModules, and for ``torch.export`` graph modules each ``aten.linear``
on a constant weight is replaced by a dynamically quantized Linear module.

Other modes (static, ...) live in :mod:`deepopt_core.passes.quantize.ort_modes` when registered.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
from onnx import helper, numpy_helper

from deepopt_core.errors import PassFailed
from deepopt_core.passes.context import PassContext

log = logging.getLogger("deepopt.passes.quantize")
_QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "MatMulIntegerToFloat",
                  "DynamicQuantizeLSTM", "QAttention", "GatherBlockQuantized")


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite, in place, ``Gemm(A, B, C)`` with a constant B, ``transA=0`` and ``alpha=1`` as MatMul (+ Add).

    A transposed weight (``transB=1``) is stored transposed in a new initializer (the old one is dropped when no
    other node uses it); ``beta`` scales C. The MatMul keeps the Gemm's name. Returns the number rewritten.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users = Counter(name for node in graph.node for name in node.input)
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
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
    still_used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in still_used or t.name in {i.name for i in graph.input}]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def _resolve_exclude(model: onnx.ModelProto, exclude: list[str]) -> tuple[list[str], list[str]]:
    """Node names to exclude: given as node names, or layer names (``fc1``) / weight names (``fc1.weight``)."""
    from deepopt_core.formats.onnx_inspect import weight_refs
    from deepopt_core.sparsity import onnx_layer_name

    by_alias: dict[str, str] = {}
    for ref in weight_refs(model):
        by_alias[onnx_layer_name(ref)] = ref.node
        by_alias[ref.name] = ref.node
    node_names = {n.name for n in model.graph.node}
    nodes, unmatched = [], []
    for entry in exclude:
        if entry in node_names:
            nodes.append(entry)
        elif entry in by_alias:
            nodes.append(by_alias[entry])
        else:
            unmatched.append(entry)
    return nodes, unmatched


def apply_onnx(spec: Any, model: onnx.ModelProto | str | Path, ctx: PassContext) -> onnx.ModelProto:
    """Quantize an ONNX model; other modes than ``dynamic`` go to ``ort_modes``."""
    if getattr(spec, "mode", "dynamic") != "dynamic":
        import importlib

        other = getattr(importlib.import_module("deepopt_core.passes.quantize.ort_modes"), "apply_onnx", None)
        if other is None:
            raise PassFailed(f"quantize: mode {spec.mode!r} has no pipeline implementation")
        return other(spec, model, ctx)  # type: ignore[no-any-return]
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    work = onnx.ModelProto()
    work.CopyFrom(model)
    rewritten = gemm_to_matmul(work)
    try:
        work = onnx.shape_inference.infer_shapes(work)
    except Exception as exc:  # shape inference only helps; a model it cannot handle still quantizes
        log.info("shape inference skipped: %s", exc)
    ctx.progress(0.2)
    exclude, unmatched = _resolve_exclude(work, list(spec.exclude))
    if unmatched:
        ctx.warn(f"quantize: exclude names {unmatched} match no node or layer")
    op_types = ["MatMul", "Attention", "LSTM", "Gather", "EmbedLayerNormalization"]
    if spec.weight_dtype == "uint8":
        op_types.append("Conv")
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        out = Path(tmp) / "quantized.onnx"
        try:
            quantize_dynamic(
                work, out, op_types_to_quantize=op_types, per_channel=spec.per_channel,
                weight_type=QuantType.QInt8 if spec.weight_dtype == "int8" else QuantType.QUInt8,
                nodes_to_exclude=exclude or None, extra_options={"MatMulConstBOnly": True},
            )  # fmt: skip
        except Exception as exc:
            raise PassFailed(f"quantize: ONNX Runtime could not quantize the model: {str(exc)[:500]}") from None
        quantized = onnx.load(str(out))
    ctx.progress(0.9)
    ops = Counter(n.op_type for n in quantized.graph.node)
    count = sum(ops[op] for op in _QUANTIZED_OPS)
    if count == 0:
        ctx.warn("quantize: no node was quantized (no MatMul with a constant weight outside `exclude`)")
    ctx.decisions.update({
        "mode": "dynamic", "engine": "onnxruntime", "weight_dtype": spec.weight_dtype,
        "per_channel": spec.per_channel, "gemm_rewritten_as_matmul": rewritten, "quantized_nodes": count,
        "quantized_ops": {op: ops[op] for op in _QUANTIZED_OPS if ops[op]}, "excluded": exclude,
        "float_conv": bool(ops["Conv"]) and spec.weight_dtype == "int8",
    })  # fmt: skip
    return quantized


def _qconfig(spec: Any) -> Any:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    return per_channel_dynamic_qconfig if spec.per_channel else default_dynamic_qconfig


def _quantize_graph_module(module: Any, qconfig: Any, exclude: set[str]) -> list[str]:
    """Replace ``aten.linear(x, W, b)`` on constant W (and b) by a dynamically quantized Linear module."""
    import torch
    from torch import nn
    from torch.ao.nn.quantized import dynamic as nnqd

    from deepopt_core.formats.torch_common import get_attr

    done: list[str] = []
    for node in list(module.graph.nodes):
        if node.op != "call_function" or str(node.target) != "aten.linear.default":
            continue
        args = list(node.args) + [None] * (3 - len(node.args))
        x, weight, bias = args[:3]
        if getattr(weight, "op", None) != "get_attr" or (bias is not None and getattr(bias, "op", None) != "get_attr"):
            continue
        layer = str(weight.target).removesuffix(".weight")
        if layer in exclude:
            continue
        w = get_attr(module, str(weight.target))
        float_linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            float_linear.weight.copy_(w)
            if bias is not None:
                float_linear.bias.copy_(get_attr(module, str(bias.target)))
        float_linear.qconfig = qconfig
        name = "dq_" + layer.replace(".", "_")
        module.add_submodule(name, nnqd.Linear.from_float(float_linear))
        with module.graph.inserting_before(node):
            replacement = module.graph.call_module(name, (x,))
        node.replace_all_uses_with(replacement)
        module.graph.erase_node(node)
        for attr in (weight, bias):
            if attr is not None and not attr.users:
                target = str(attr.target)
                module.graph.erase_node(attr)
                owner, _, leaf = target.rpartition(".")
                delattr(module.get_submodule(owner) if owner else module, leaf)
        done.append(layer)
    module.graph.lint()
    module.recompile()
    return done


def apply_torch(spec: Any, model: Any, ctx: PassContext) -> Any:
    """Dynamically quantize the Linear layers of a torch module (see the module docstring for the three kinds)."""
    if getattr(spec, "mode", "dynamic") != "dynamic":
        raise PassFailed(f"quantize: mode {spec.mode!r} runs on ONNX models only")
    if spec.weight_dtype != "int8":
        raise PassFailed("quantize: PyTorch dynamic quantization stores int8 weights; uint8 is for ONNX outputs")
    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic, quantize_dynamic_jit

    from deepopt_core.formats.torch_common import is_graph, is_script, prunable_params, quantized_weights

    exclude = set(spec.exclude)
    qconfig = _qconfig(spec)
    linear_names = [name for name, w in prunable_params(model).items() if w.dim() == 2]
    rewritten: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if is_script(model):
                mapping: dict[str, Any] = {"": qconfig}
                mapping.update({name: None for name in exclude})
                quantized = quantize_dynamic_jit(model, mapping)
                engine = "torch.ao quantize_dynamic_jit (TorchScript graph mode)"
            elif is_graph(model):
                rewritten = _quantize_graph_module(model, qconfig, exclude)
                quantized = model
                engine = "torch.ao dynamic Linear (torch.export graph rewrite)"
            else:
                inner = getattr(model, "hf_model", model)
                spec_map = {name: qconfig for name, m in inner.named_modules()
                            if isinstance(m, nn.Linear) and name not in exclude}
                quantized_inner = quantize_dynamic(inner, spec_map, dtype=torch.qint8, inplace=False)
                if inner is not model:
                    model.hf_model = quantized_inner
                    quantized = model
                else:
                    quantized = quantized_inner
                engine = "torch.ao quantize_dynamic (eager nn.Linear)"
        except (RuntimeError, AttributeError, TypeError) as exc:
            raise PassFailed(f"quantize: PyTorch dynamic quantization failed: {str(exc)[:500]}") from None
    layers = rewritten if is_graph(quantized) else sorted(quantized_weights(quantized))
    if not layers:
        ctx.warn("quantize: no Linear layer was quantized")
    ctx.decisions.update({
        "mode": "dynamic", "engine": engine, "weight_dtype": "int8", "per_channel": spec.per_channel,
        "quantized_layers": layers, "linear_layers": linear_names, "excluded": sorted(exclude),
    })  # fmt: skip
    ctx.progress(1.0)
    return quantized
