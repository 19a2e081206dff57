"""The PyTorch side of the `quantize` pass's `weight_only` and `fp16`/`bf16` modes.

Three kinds of torch models reach a pass (:mod:`deepopt_core.formats.torch_common`): TorchScript modules, the
``GraphModule`` of a ``torch.export`` program, and Hugging Face models inside their wrapper (eager). Each mode
handles all three:

* eager: ``nn.Linear`` submodules are replaced by :class:`WeightOnlyLinear`, or the model is converted with
  ``.to(dtype)`` and hooks cast at its edges and around the layers kept in float32;
* ``torch.export``: the FX graph is rewritten: each ``aten.linear`` on a constant weight calls a
  :class:`WeightOnlyLinear`, and casts are inserted after the inputs, before the outputs and around layers kept in
  float32;
* TorchScript: the module is frozen with its parameters kept as attributes (one inlined graph in which every
  weight read names its layer), that graph is rewritten the same way with constant tensors, and the module is
  frozen again so that what the file holds is what the graph reads.

The outputs are plain aten ops on int8/uint8/float tensors: they load with ``torch.jit.load`` or
``torch.export.load`` without this project installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from deepopt_core.errors import PassFailed
from deepopt_core.formats.torch_common import HF_PREFIX, get_attr, is_graph, is_script, unwrap
from deepopt_core.passes.context import PassContext

log = logging.getLogger("deepopt.passes.quantize")

CLIP_GRID = np.linspace(0.8, 1.15, 15)
"""Clipping ratios of a block's absolute maximum searched by `awq_clip` (as on ONNX)."""


# ---------------------------------------------------------------------------------------------------------------
# Weight-only: block-wise int8 / int4 Linear weights
# ---------------------------------------------------------------------------------------------------------------


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """(N, blocks, block/2) uint8, two 4-bit values per byte (low nibble first, zero point 8), times (N, blocks,
    1) scales -> the (N, in_features) float weight."""
    values = torch.stack([torch.bitwise_and(q, 15), torch.bitwise_right_shift(q, 4)], dim=-1)
    values = values.reshape(q.size(0), q.size(1), -1).to(scales.dtype) - 8.0
    return (values * scales).reshape(q.size(0), -1)[:, :in_features]


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """(N, blocks, block) int8 times (N, blocks, 1) scales -> the (N, in_features) float weight."""
    return (q.to(scales.dtype) * scales).reshape(q.size(0), -1)[:, :in_features]


class WeightOnlyLinear(nn.Module):
    """A Linear layer whose weight is stored block-wise in int8 or packed int4 with one float scale per block of
    `block_size` input channels (symmetric), dequantized in `forward`.

    Buffers: ``qweight`` ((N, blocks, block) int8, or (N, blocks, block/2) uint8 for int4), ``qscales``
    ((N, blocks, 1) float32) and ``bias``. The forward is plain aten ops, so the layer survives
    ``torch.jit.trace`` and ``torch.export`` and the saved model needs nothing from this project.
    """

    qweight: torch.Tensor
    qscales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, qweight: torch.Tensor, qscales: torch.Tensor, bias: torch.Tensor | None, in_features: int):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(qweight.shape[0])
        self.bits = 4 if qweight.dtype == torch.uint8 else 8
        self.register_buffer("qweight", qweight)
        self.register_buffer("qscales", qscales)
        self.register_buffer("bias", bias)

    def dequantized(self) -> torch.Tensor:
        if self.bits == 4:
            return dequantize_int4(self.qweight, self.qscales, self.in_features)
        return dequantize_int8(self.qweight, self.qscales, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, self.dequantized().to(x.dtype), bias)

    def extra_repr(self) -> str:
        block = self.qweight.shape[-1] * (2 if self.bits == 4 else 1)
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}, block={block}"


def quantize_blocks(weight: torch.Tensor, bits: int, block_size: int, clip_search: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric block-wise quantization of an (N, K) weight: (qweight, qscales) as :class:`WeightOnlyLinear`
    stores them. The same math as ONNX's `awq_clip` without activation statistics: with `clip_search`, each
    block's clipping ratio minimizes its squared error; otherwise round to nearest with scale max|w| / (2^(b-1)-1).
    """
    from deepopt_core.passes.quantize.ort_weight_only import blockwise_symmetric

    w = weight.detach().to(torch.float32).cpu().numpy()
    n, k = w.shape
    qmax = 2 ** (bits - 1)
    grid = CLIP_GRID if clip_search else np.array([qmax / (qmax - 1)])
    packed, scales = blockwise_symmetric(np.ascontiguousarray(w.T), block_size, bits, None, grid)
    blocks = -(-k // block_size)
    if bits == 8:
        packed = (packed.astype(np.int16) - 128).astype(np.int8)
    return torch.from_numpy(np.ascontiguousarray(packed)), torch.from_numpy(scales.reshape(n, blocks, 1).copy())


def _make_layer(weight: torch.Tensor, bias: torch.Tensor | None, bits: int, block_size: int,
                clip_search: bool) -> WeightOnlyLinear:
    qweight, qscales = quantize_blocks(weight, bits, block_size, clip_search)
    bias = bias.detach().to(torch.float32).clone() if bias is not None else None
    return WeightOnlyLinear(qweight, qscales, bias, weight.shape[1])


def replace_graph_linears(module: Any, exclude: set[str], build: Callable[[torch.Tensor, torch.Tensor | None], Any],
                          prefix: str) -> list[str]:
    """In a ``torch.export`` GraphModule, replace each ``aten.linear(x, W, b)`` on constant W (and b) by a call of
    the module `build(W, b)` returns (registered as ``<prefix><layer>``); W and b are dropped when unused.
    Returns the layer names replaced."""
    done: list[str] = []
    for node in list(module.graph.nodes):
        if node.op != "call_function" or str(node.target) != "aten.linear.default":
            continue
        args = list(node.args) + [None] * (3 - len(node.args))
        x, weight, bias = args[:3]
        if getattr(weight, "op", None) != "get_attr" or (bias is not None and getattr(bias, "op", None) != "get_attr"):
            continue
        layer = str(weight.target).removesuffix(".weight")
        if layer.removeprefix(HF_PREFIX) in exclude or layer in exclude:
            continue
        w = get_attr(module, str(weight.target))
        if not (isinstance(w, torch.Tensor) and w.is_floating_point() and w.dim() == 2):
            continue
        b = get_attr(module, str(bias.target)) if bias is not None else None
        name = prefix + layer.replace(".", "_")
        module.add_submodule(name, build(w, b))
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
        done.append(layer.removeprefix(HF_PREFIX))
    module.graph.lint()
    module.recompile()
    return done


# ---------------------------------------------------------------------------------------------------------------
# TorchScript graph surgery
# ---------------------------------------------------------------------------------------------------------------


def _freeze(module: Any, preserve_parameters: bool, keep: list[str] | None = None) -> Any:
    """Freeze a ScriptModule without the numerics-changing optimizations of ``torch.jit.freeze``: one inlined
    `forward`; parameters stay attributes (read with ``prim::GetAttr``) when `preserve_parameters`, else every
    attribute the graph reads becomes a constant (except those named in `keep`) and the others are dropped."""
    from torch.jit._script import RecursiveScriptModule

    frozen = RecursiveScriptModule(torch._C._freeze_module(module.eval()._c, list(keep or []), True,
                                                           preserve_parameters))
    RecursiveScriptModule._finalize_scriptmodule(frozen)
    return frozen.eval()


def _attr_path(value: Any) -> str | None:
    """``fc1.weight`` for a value read by a chain of ``prim::GetAttr`` from the graph's `self`, else None."""
    names: list[str] = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        node = node.input().node()
    if node.kind() != "prim::Param" or not names:
        return None
    return ".".join(reversed(names))


def _is_tensor(value: Any) -> bool:
    return isinstance(value.type(), torch._C.TensorType)


_SCRIPTED: dict[str, Any] = {}


def _scripted(fn: Callable[..., Any]) -> Any:
    """`fn` compiled by TorchScript once (its graph is what :func:`_call_inline` inserts)."""
    if fn.__name__ not in _SCRIPTED:
        _SCRIPTED[fn.__name__] = torch.jit.script(fn)
    return _SCRIPTED[fn.__name__]


def _call_inline(graph: Any, fn: Callable[..., Any], inputs: list[Any], before: Any) -> Any:
    """Insert the body of the TorchScript function `fn` applied to `inputs` before node `before`; its output."""
    with graph.insert_point_guard(before):
        return graph.insertGraph(_scripted(fn).graph, inputs)[0]


def _constant(graph: Any, value: Any, before: Any) -> Any:
    """A constant inserted before node `before` (tensors detached: TorchScript refuses ones requiring grad)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
    with graph.insert_point_guard(before):
        return graph.insertConstant(value)


def _get_attr(graph: Any, name: str, before: Any) -> Any:
    """``prim::GetAttr[name](self)`` on the graph's module, inserted before node `before`."""
    node = graph.create("prim::GetAttr", [next(iter(graph.inputs()))])
    node.s_("name", name)
    node.output().setType(torch._C.TensorType.get())
    with graph.insert_point_guard(before):
        graph.insertNode(node)
    return node.output()


def _script_weight_only(module: Any, exclude: set[str], bits: int, block_size: int, clip_search: bool
                        ) -> tuple[Any, list[str], dict[str, int]]:
    """Weight-only quantization of a ScriptModule's ``aten::linear`` weights. The int weights and their scales
    become attributes of the top module (``<layer>_qweight`` / ``<layer>_qscales``, kept as attributes when the
    module is frozen again: as constants, freezing would fold their dequantization back into a float weight)."""
    frozen = _freeze(module, preserve_parameters=True)
    graph = frozen.graph
    done: list[str] = []
    kept: list[str] = []
    sizes = {"float": 0, "quantized": 0}
    dequantize = dequantize_int4 if bits == 4 else dequantize_int8
    for node in list(graph.findAllNodes("aten::linear")):
        path = _attr_path(node.inputsAt(1))
        if path is None or not path.endswith(".weight"):
            continue
        layer = path.removesuffix(".weight")
        weight = get_attr(frozen, path)
        if layer in exclude or not (isinstance(weight, torch.Tensor) and weight.is_floating_point()
                                    and weight.dim() == 2):
            continue
        qweight, qscales = quantize_blocks(weight, bits, block_size, clip_search)
        base = layer.replace(".", "_")
        if base + "_qweight" not in kept:  # a weight shared by several ops is stored once
            for suffix, value in (("_qweight", qweight), ("_qscales", qscales)):
                frozen._c._register_attribute(base + suffix, torch._C.TensorType.get(), value)
                kept.append(base + suffix)
        inputs = [_get_attr(graph, base + "_qweight", node), _get_attr(graph, base + "_qscales", node),
                  _constant(graph, int(weight.shape[1]), node)]
        node.replaceInput(1, _call_inline(graph, dequantize, inputs, node))
        sizes["float"] += weight.numel() * weight.element_size()
        sizes["quantized"] += qweight.numel() * qweight.element_size() + qscales.numel() * qscales.element_size()
        done.append(layer)
    torch._C._jit_pass_dce(graph)
    return _freeze(frozen, preserve_parameters=False, keep=kept), done, sizes


def _to_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) if x.is_floating_point() else x


def _to_float16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16) if x.is_floating_point() else x


def _to_bfloat16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16) if x.is_floating_point() else x


def _script_half(module: Any, dtype: torch.dtype, exclude: set[str], keep_io_types: bool
                 ) -> tuple[Any, int, list[str]]:
    """Half-precision weights and compute for a ScriptModule; layers named in `exclude` stay float32 with casts
    around the ops that read their weights. Returns (module, tensors converted, layers kept in float32)."""
    to_low = _to_float16 if dtype == torch.float16 else _to_bfloat16
    frozen = _freeze(module, preserve_parameters=True)
    graph = frozen.graph
    converted, kept = 0, set()
    float_readers: list[Any] = []
    for node in list(graph.findAllNodes("prim::GetAttr")):
        value = node.output()
        path = _attr_path(value) if _is_tensor(value) else None
        tensor = get_attr(frozen, path) if path else None
        if not (isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32):
            continue
        layer = path.rpartition(".")[0] if path else ""
        if layer in exclude:
            kept.add(layer)
            float_readers.extend(use.user for use in value.uses())
            continue
        value.replaceAllUsesWith(_constant(graph, tensor.to(dtype), node))
        converted += 1
    for node in list(graph.findAllNodes("prim::Constant")):
        value = node.output()
        tensor = value.toIValue() if _is_tensor(value) else None
        if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.dim() > 0:
            value.replaceAllUsesWith(_constant(graph, tensor.to(dtype), node))
            converted += 1
    for reader in dict.fromkeys(float_readers):  # ops on float32 weights: float32 activations in, low out
        for index, value in enumerate(list(reader.inputs())):
            if _is_tensor(value) and value.node().kind() not in ("prim::GetAttr", "prim::Constant"):
                reader.replaceInput(index, _call_inline(graph, _to_float32, [value], reader))
        for out in reader.outputs():
            if _is_tensor(out):
                for use in list(out.uses()):
                    use.user.replaceInput(use.offset, _call_inline(graph, to_low, [out], use.user))
    if keep_io_types:
        first = next(iter(graph.nodes()))
        for value in list(graph.inputs())[1:]:
            if _is_tensor(value):
                uses = list(value.uses())
                cast = _call_inline(graph, to_low, [value], first)
                for use in uses:
                    use.user.replaceInput(use.offset, cast)
        _cast_outputs(graph)
    torch._C._jit_pass_dce(graph)
    return _freeze(frozen, preserve_parameters=False), converted, sorted(kept)


def _cast_outputs(graph: Any) -> None:
    """Cast the graph's float outputs (a tensor, or the tensors of a returned tuple) to float32."""
    ret = graph.return_node()
    for index, value in enumerate(list(ret.inputs())):
        producer = value.node()
        if _is_tensor(value):
            ret.replaceInput(index, _call_inline(graph, _to_float32, [value], ret))
        elif producer.kind() == "prim::TupleConstruct":
            for j, item in enumerate(list(producer.inputs())):
                if _is_tensor(item):
                    producer.replaceInput(j, _call_inline(graph, _to_float32, [item], producer))


# ---------------------------------------------------------------------------------------------------------------
# Passes
# ---------------------------------------------------------------------------------------------------------------


def _linear_names(model: Any) -> list[str]:
    from deepopt_core.formats.torch_common import prunable_params

    return [name for name, w in prunable_params(model).items() if w.dim() == 2]


def _warn_unmatched(ctx: PassContext, exclude: set[str], known: list[str]) -> None:
    unmatched = sorted(exclude - set(known))
    if unmatched:
        ctx.warn(f"quantize: exclude names {unmatched} match no layer")


def weight_only(spec: Any, model: Any, ctx: PassContext) -> Any:
    """Store the weights of Linear layers block-wise in int8 or packed int4 (see :class:`WeightOnlyLinear`)."""
    bits = 4 if spec.weight_dtype == "int4" else 8
    clip_search = spec.algorithm in ("auto", "awq_clip")
    exclude = set(spec.exclude)
    linear_names = _linear_names(model)
    sizes = {"float": 0, "quantized": 0}

    def build(weight: torch.Tensor, bias: torch.Tensor | None) -> WeightOnlyLinear:
        layer = _make_layer(weight, bias, bits, spec.block_size, clip_search)
        sizes["float"] += weight.numel() * weight.element_size()
        sizes["quantized"] += (layer.qweight.numel() * layer.qweight.element_size()
                               + layer.qscales.numel() * layer.qscales.element_size())
        return layer

    try:
        if is_script(model):
            quantized, layers, sizes = _script_weight_only(model, exclude, bits, spec.block_size, clip_search)
            engine = "TorchScript graph rewrite (frozen, constant int weights)"
        elif is_graph(model):
            layers = replace_graph_linears(model, exclude, build, "wo_")
            quantized, engine = model, "torch.export graph rewrite (WeightOnlyLinear)"
        else:
            inner = unwrap(model)
            layers = []
            for name, sub in list(inner.named_modules()):
                if type(sub) is not nn.Linear or name in exclude:
                    continue
                parent, _, leaf = name.rpartition(".")
                setattr(inner.get_submodule(parent) if parent else inner, leaf, build(sub.weight, sub.bias))
                layers.append(name)
            quantized, engine = model, "eager nn.Linear -> WeightOnlyLinear"
    except (RuntimeError, AttributeError, TypeError, ValueError) as exc:
        raise PassFailed(f"quantize: weight-only quantization of the PyTorch model failed: {str(exc)[:500]}") from None
    _warn_unmatched(ctx, exclude, linear_names)
    if not layers:
        ctx.warn("quantize: no Linear layer was quantized (no nn.Linear / aten.linear with a constant weight "
                 "outside `exclude`)")
    kept = [{"layer": name, "reason": "excluded by the user" if name in exclude else
             "not an nn.Linear / aten.linear with a constant 2-D weight"}
            for name in linear_names if name not in layers]
    ctx.decisions.update({
        "mode": "weight_only", "engine": engine,
        "settings": {"weight_dtype": spec.weight_dtype, "bits": bits, "block_size": spec.block_size,
                     "symmetric": True, "algorithm": "awq_clip (clip search, no activation statistics)"
                     if clip_search else "rtn"},
        "quantized_layers": layers, "kept_float": kept, "linear_layers": linear_names,
        "weight_bytes": {**sizes, "ratio": round(sizes["quantized"] / max(sizes["float"], 1), 4)},
    })  # fmt: skip
    ctx.progress(1.0)
    return quantized


def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    """Tensors of `value` (a tensor, or a tuple/list/dict/ModelOutput of them) that are floating, cast to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        items = [_cast_floating(v, dtype) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_cast_floating(v, dtype) for v in value]
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _cast_floating(value[key], dtype)
        return value
    return value


def _graph_cast(graph: Any, node: Any, dtype: torch.dtype, before: bool) -> Any:
    insert = graph.inserting_before(node) if before else graph.inserting_after(node)
    with insert:
        return graph.call_function(_cast_floating, (node, dtype))


def _graph_half(module: Any, dtype: torch.dtype, exclude: set[str], keep_io_types: bool) -> tuple[int, list[str]]:
    """Half precision for a torch.export GraphModule, in place; returns (tensors converted, layers kept float32)."""
    graph = module.graph
    converted, kept = 0, set()
    float_readers = []
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        target = str(node.target)
        tensor = get_attr(module, target)
        if not (isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32):
            continue
        layer = target.rpartition(".")[0].removeprefix(HF_PREFIX)
        if layer in exclude:
            kept.add(layer)
            float_readers.extend(node.users)
            continue
        owner, _, leaf = target.rpartition(".")
        parent = module.get_submodule(owner) if owner else module
        low = tensor.detach().to(dtype)
        if isinstance(tensor, nn.Parameter):
            setattr(parent, leaf, nn.Parameter(low, requires_grad=False))
        elif leaf in getattr(parent, "_buffers", {}):
            parent._buffers[leaf] = low
        else:
            setattr(parent, leaf, low)
        converted += 1
    for reader in dict.fromkeys(float_readers):
        for arg in reader.all_input_nodes:
            if arg.op != "get_attr":
                cast = _graph_cast(graph, arg, torch.float32, before=False)
                reader.replace_input_with(arg, cast)
        users = list(reader.users)
        cast = _graph_cast(graph, reader, dtype, before=False)
        for user in users:
            user.replace_input_with(reader, cast)
    if keep_io_types:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        for node in placeholders:
            users = list(node.users)
            with graph.inserting_after(placeholders[-1]):
                cast = graph.call_function(_cast_floating, (node, dtype))
            for user in users:
                user.replace_input_with(node, cast)
        output = next(n for n in graph.nodes if n.op == "output")
        with graph.inserting_before(output):
            cast = graph.call_function(_cast_floating, (output.args[0], torch.float32))
        output.args = (cast,)
    graph.lint()
    module.recompile()
    return converted, sorted(kept)


def half_precision(spec: Any, model: Any, ctx: PassContext) -> Any:
    """float16 / bfloat16 weights and compute; inputs and outputs stay float32 with `keep_io_types`."""
    dtype = torch.float16 if spec.mode == "fp16" else torch.bfloat16
    exclude = set(spec.exclude)
    before = _float_bytes(model)
    try:
        if is_script(model):
            converted_model, converted, kept = _script_half(model, dtype, exclude, spec.keep_io_types)
            engine = "TorchScript graph rewrite (frozen, 16-bit constants)"
        elif is_graph(model):
            converted, kept = _graph_half(model, dtype, exclude, spec.keep_io_types)
            converted_model, engine = model, "torch.export graph rewrite"
        else:
            converted_model, converted, kept = _eager_half(model, dtype, exclude, spec.keep_io_types)
            engine = "eager .to(dtype) with casting hooks"
    except (RuntimeError, AttributeError, TypeError, ValueError) as exc:
        raise PassFailed(f"quantize: {spec.mode} conversion of the PyTorch model failed: {str(exc)[:500]}") from None
    _warn_unmatched(ctx, exclude, kept)
    ctx.decisions.update({
        "mode": spec.mode, "engine": engine,
        "settings": {"dtype": str(dtype).removeprefix("torch."), "keep_io_types": spec.keep_io_types},
        "low_precision_tensors": converted, "kept_float32": [{"layer": name, "reason": "excluded by the user"}
                                                             for name in kept],
        "float32_weight_bytes_before": before,
    })  # fmt: skip
    ctx.progress(1.0)
    return converted_model


def _float_bytes(model: Any) -> int:
    try:
        return int(sum(t.numel() * t.element_size() for t in unwrap(model).state_dict().values()
                       if isinstance(t, torch.Tensor) and t.dtype == torch.float32))
    except (RuntimeError, AttributeError):
        return 0


def _eager_half(model: Any, dtype: torch.dtype, exclude: set[str], keep_io_types: bool) -> tuple[Any, int, list[str]]:
    inner = unwrap(model)
    converted = sum(1 for t in inner.state_dict().values() if isinstance(t, torch.Tensor) and t.is_floating_point())
    inner.to(dtype)
    kept = []
    for name in sorted(exclude):
        try:
            sub = inner.get_submodule(name)
        except AttributeError:
            continue
        sub.float()
        sub.register_forward_pre_hook(
            lambda _m, args, kwargs: (_cast_floating(args, torch.float32), _cast_floating(kwargs, torch.float32)),
            with_kwargs=True)
        sub.register_forward_hook(lambda _m, _args, output: _cast_floating(output, dtype))
        kept.append(name)
    if keep_io_types:
        inner.register_forward_pre_hook(
            lambda _m, args, kwargs: (_cast_floating(args, dtype), _cast_floating(kwargs, dtype)), with_kwargs=True)
        inner.register_forward_hook(lambda _m, _args, output: _cast_floating(output, torch.float32))
    return model, converted, kept
