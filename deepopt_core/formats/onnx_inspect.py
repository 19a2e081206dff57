"""Read an ONNX file safely and describe it; find its prunable weights. onnx and numpy only (the API imports it).

Models are loaded with ``load_external_data=False``; every external-data location (of every tensor: initializers,
sparse initializers and tensor attributes, in the main graph, subgraphs, functions and training graphs) is checked
to stay inside the model's folder before anything reads it. An uploaded model is a single file, so external data
there is an error. Nodes in custom-op domains are refused: they run only with a custom-op library, which DeepOpt
never registers, so such a model is either unusable or asking for native code.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from deepopt_core.errors import InvalidModel, UnsafeContent
from deepopt_core.specs import ModelInfo, TensorInfo

log = logging.getLogger("deepopt.formats")

# Ops whose input 1 is a weight that pruning may zero (float), and the quantized ops that carry such a weight
# with its zero point at `zero_point_input`.
PRUNABLE_OPS = ("MatMul", "Gemm", "Conv")
_QUANTIZED_WEIGHT_OPS = {"MatMulInteger": 3, "ConvInteger": 3, "DynamicQuantizeMatMul": 3, "MatMulIntegerToFloat": 5}
# Inputs of quantization ops that are scales or zero points, not parameters.
_QUANT_PARAM_SLOTS = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "DynamicQuantizeLinear": (), "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3), "DynamicQuantizeMatMul": (2, 3), "MatMulIntegerToFloat": (2, 3, 4, 5),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7), "QLinearConv": (1, 2, 4, 5, 6, 7), "MatMulNBits": (2, 3),
}  # fmt: skip
STANDARD_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training", "ai.onnx.training",
})  # fmt: skip
"""Operator domains ONNX Runtime implements itself (calls of a model's own local functions are allowed too)."""
_PARAMETER_TYPES = {
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
    TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4,
}  # fmt: skip


@dataclass(frozen=True)
class WeightRef:
    """A weight initializer used by a MatMul/Gemm/Conv-like node.

    Attributes:
        name: the initializer's name.
        node: name of the node that uses it (the layer name users see and `exclude`).
        op_type: that node's op type.
        zero_point: initializer holding the weight's zero point (quantized weights), else None.
        transposed: Gemm with transB=1 (weight stored [out, in]).
    """

    name: str
    node: str
    op_type: str
    zero_point: str | None = None
    transposed: bool = False


def load_onnx(path: str | Path, *, allow_external_data: bool = False) -> onnx.ModelProto:
    """Parse an ONNX file without following external data, and check any external-data locations.

    Args:
        path: the .onnx file.
        allow_external_data: accept tensors stored beside the file (inside its folder); an uploaded single file
            must not have any.

    Raises:
        InvalidModel: unparsable, truncated, or (single file) referencing external data.
        UnsafeContent: an external-data location outside the model's folder.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, onnx.checker.ValidationError) as exc:
        raise InvalidModel(f"not a readable ONNX model: {exc}") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModel("the ONNX model has no graph")
    check_domains(model)
    external = external_locations(model)
    if external:
        folder = path.resolve().parent
        for location in external:
            pure = PurePosixPath(location.replace("\\", "/"))
            resolved = (folder / location).resolve()
            if pure.is_absolute() or ".." in pure.parts or not resolved.is_relative_to(folder):
                raise UnsafeContent(f"external data location {location!r} points outside the model's folder")
        if not allow_external_data:
            raise InvalidModel("the model stores tensors in external data files, which are not part of the upload; "
                               "save it as one file (onnx.save with save_as_external_data=False)")
    if len(model.graph.sparse_initializer):
        # Sparse initializers (a pruned model written compactly) become dense ones, so that inspection, sparsity
        # measurement and the passes read plain initializers; what a sparse tensor may expand to is bounded.
        from deepopt_core.formats.onnx_sparse import densify_onnx

        try:
            model = densify_onnx(model, copy=False)
        except (ValueError, TypeError) as exc:
            raise InvalidModel(f"the ONNX model has an invalid sparse initializer: {exc}") from None
    return model


def _subgraphs(nodes: Iterator[onnx.NodeProto] | list[onnx.NodeProto]) -> Iterator[onnx.GraphProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from all_graphs(attribute.g)
            for graph in attribute.graphs:
                yield from all_graphs(graph)


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph below it (If/Loop/Scan bodies, at any depth)."""
    yield graph
    yield from _subgraphs(list(graph.node))


def _model_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    yield from all_graphs(model.graph)
    for info in model.training_info:
        yield from all_graphs(info.initialization)
        yield from all_graphs(info.algorithm)
    for function in model.functions:
        yield from _subgraphs(list(function.node))


def _model_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _model_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto of the model: dense and sparse initializers and tensor attributes, everywhere."""
    for graph in _model_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for node in _model_nodes(model):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            sparse_tensors = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
            for sparse in [*sparse_tensors, *attribute.sparse_tensors]:
                yield from (sparse.values, sparse.indices)


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The `location` of every tensor (see :func:`_all_tensors`) stored as external data."""
    locations = []
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            locations.append(entries.get("location", ""))
    return locations


def check_domains(model: onnx.ModelProto) -> None:
    """Refuse nodes (in any graph, subgraph or function) in a domain outside :data:`STANDARD_DOMAINS`, unless
    they call one of the model's own local functions (same domain and name).

    Raises:
        UnsafeContent: naming the domain and op.
    """
    local = {(function.domain, function.name) for function in model.functions}
    for node in _model_nodes(model):
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            raise UnsafeContent(f"the ONNX model uses the custom operator {node.domain}.{node.op_type}, which needs "
                                "a custom-op library; DeepOpt never loads one")


def dtype_name(elem_type: int) -> str:
    """numpy-style dtype name of an ONNX element type ("float32", "int64"; "string" and others by ONNX name)."""
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return TensorInfo(name=value.name, shape=None, dtype=kind or "unknown")
    tensor = value.type.tensor_type
    shape: list[int | str | None] | None = None
    if tensor.HasField("shape"):
        shape = []
        for dim in tensor.shape.dim:
            which = dim.WhichOneof("value")
            shape.append(dim.dim_value if which == "dim_value" else dim.dim_param if which == "dim_param" else None)
    return TensorInfo(name=value.name, shape=shape, dtype=dtype_name(tensor.elem_type))


def weight_refs(model: onnx.ModelProto) -> list[WeightRef]:
    """Weights of MatMul/Gemm/Conv nodes (float) and of their quantized forms, never biases or embeddings.

    An initializer also read by a Gather (a tied embedding) is left out. A weight reached through a
    DequantizeLinear of an initializer (QDQ models) counts, with the DequantizeLinear's zero point.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input}
    dequantized = {
        n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits
    }
    refs: list[WeightRef] = []
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if len(node.input) < 2:
            continue
        weight = node.input[1]
        ref: WeightRef | None = None
        if node.op_type in PRUNABLE_OPS and weight in inits:
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            ref = WeightRef(weight, name, node.op_type, transposed=trans_b and node.op_type == "Gemm")
        elif node.op_type in PRUNABLE_OPS and weight in dequantized:
            dq = dequantized[weight]
            zero_point = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
            ref = WeightRef(dq.input[0], name, node.op_type, zero_point)
        elif node.op_type in _QUANTIZED_WEIGHT_OPS and weight in inits:
            slot = _QUANTIZED_WEIGHT_OPS[node.op_type]
            zero_point = node.input[slot] if len(node.input) > slot and node.input[slot] else None
            ref = WeightRef(weight, name, node.op_type, zero_point)
        if ref is None or ref.name in gathered or ref.name in seen or len(inits[ref.name].dims) < 2:
            continue
        seen.add(ref.name)
        refs.append(ref)
    return refs


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of float and 8/4-bit initializers, leaving out quantization scales and zero points."""
    quant_params = {
        node.input[i]
        for node in model.graph.node
        for i in _QUANT_PARAM_SLOTS.get(node.op_type, ())
        if i < len(node.input)
    }
    # ONNX Runtime's dynamic quantization multiplies the activation scale (a DynamicQuantizeLinear output) by
    # the weight scale: that weight scale is a quantization parameter too.
    activation_scales = {n.output[1] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"
                         and len(n.output) > 1}
    for node in model.graph.node:
        if node.op_type == "Mul" and activation_scales.intersection(node.input):
            quant_params.update(node.input)
    # MatMulNBits packs 8 // bits weights into each byte of its uint8 input B.
    per_byte = {
        node.input[1]: 8 // next((a.i for a in node.attribute if a.name == "bits"), 4)
        for node in model.graph.node
        if node.op_type == "MatMulNBits" and len(node.input) > 1
    }
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in _PARAMETER_TYPES and tensor.name not in quant_params:
            elements = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
            total += elements * per_byte.get(tensor.name, 1)
    return total


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: Counter[str] = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)
                for sub in attribute.graphs:
                    walk(sub)

    walk(model.graph)
    return dict(sorted(counts.items()))


def describe_onnx(model: onnx.ModelProto) -> ModelInfo:
    """The ModelInfo of a parsed ONNX model (inputs exclude initializers listed as graph inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return ModelInfo(
        format="onnx",
        inputs=[_tensor_info(v) for v in model.graph.input if v.name not in initializers],
        outputs=[_tensor_info(v) for v in model.graph.output],
        num_parameters=count_parameters(model),
        op_types=_op_counts(model),
        prunable_layers=len(weight_refs(model)),
        opset=opset,
        details={
            "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        },
    )


def inspect_onnx(path: str | Path, *, allow_external_data: bool = False) -> ModelInfo:
    """Load (safely, see :func:`load_onnx`), check with the ONNX checker, and describe an ONNX file.

    Args:
        path: the .onnx file.
        allow_external_data: see :func:`load_onnx`.

    Raises:
        InvalidModel: unreadable, truncated, failing the checker, or with external data in a single upload.
        UnsafeContent: an external-data location outside the model's folder.
    """
    model = load_onnx(path, allow_external_data=allow_external_data)
    if not external_locations(model):
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise InvalidModel(f"the ONNX model is invalid: {str(exc).splitlines()[0]}") from None
    info = describe_onnx(model)
    info.details["size_bytes"] = os.path.getsize(path)
    return info
