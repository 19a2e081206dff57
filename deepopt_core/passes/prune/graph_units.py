"""The unit groups of a traced graph: which Linear/Conv rows and columns, BatchNorm entries and depthwise filters
share one channel (or feature) index, so that structured pruning removes them together.

Every tensor downstream of a Linear or a groups=1 Conv carries that producer's *channel space*. Ops that keep
each channel where it was (activations, pools, dropout, spatial padding, BatchNorm, a depthwise conv of the same
width, ``Flatten`` before a Linear) pass the space on; an element-wise op of two such tensors (a residual add, a
squeeze-excitation's ``x * scale``, an activation written out op by op) joins their spaces into one; a Linear or
Conv reading a space is its consumer (input columns; a block of them per channel after ``Flatten``). A space is
prunable when all it reaches is understood and sizes agree: everything else that reads it (a reshape, a concat,
a LayerNorm, a graph output, a module called twice, a module another group owns) leaves it whole. So a ResNet's
residual stream, every block's last conv and the shortcut projections that add into it, shrinks together with
every conv that reads it, as in DepGraph (Fang et al., 2023, https://arxiv.org/abs/2301.12900).

Graphs come from ``torch.fx`` (plain modules, onnx2torch conversions of ONNX uploads) or from ``torch.export``
programs lifted to modules (Hugging Face models, .pt2 uploads).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("deepopt.passes.prune")

UnitKind = Literal["neurons", "channels", "heads", "ffn"]
Batch = Mapping[str, torch.Tensor]
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Hardsigmoid,
    nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_PASS_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.leaky_relu, F.elu, F.dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.hardswish, F.hardsigmoid, torch.erf,
}  # fmt: skip
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
# The same element-wise ops and pools as aten calls, in the graph of a ``torch.export`` program (lifted to modules).
_PASS_ATEN = {
    f"aten.{op}.default" for op in (
        "relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "dropout", "clone", "hardtanh", "leaky_relu", "elu",
        "hardswish", "hardsigmoid", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool2d",
        "erf", "contiguous", "alias", "hardtanh_", "silu_", "gelu_", "sigmoid_", "hardswish_",
    )
}  # fmt: skip
# onnx2torch's per-channel modules (a converted ONNX upload), by class name: onnx2torch is imported only to convert.
_PASS_ONNX_MODULES = {"OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape", "OnnxErf",
                      "OnnxSigmoid", "OnnxTanh", "OnnxHardSigmoid"}
_BINARY_ONNX_MODULES = {"OnnxBinaryMathOperation"}
_BINARY_NAMES = {"add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "div"}
# In place too (transformers' ResNet adds its shortcut with `+=`, which the export keeps as aten.add_).
_BINARY_ATEN = {f"aten.{op}{inplace}.{kind}" for op in ("add", "mul", "sub", "div") for inplace in ("", "_")
                for kind in ("Tensor", "Scalar")}


@dataclass
class UnitGroup:
    """Units that are removed together from producers (output rows), norms and consumers (input columns).

    Attributes:
        kind: the unit kind.
        name: the group's name (its first producer, or ``<layer>.attention.self`` / ``<layer>.intermediate``).
        size: number of units now.
        producers: modules whose outputs are the units (``width`` consecutive rows per unit); several when a
            residual add or an element-wise product joins their outputs.
        width: rows per unit in producers (head size for heads, else 1).
        norms: BatchNorm modules with one entry per unit.
        depthwise: depthwise convs the units run through (one filter per unit, ``groups`` = units), cut with them:
            a MobileNet block's expansion channels run through one.
        consumers: modules reading the units (``consumer_width`` consecutive input columns per unit).
        consumer_width: input columns per unit in consumers (head size; spatial size after Flatten; else 1).
        owner: for heads, the attention module whose head count is updated.
    """

    kind: UnitKind
    name: str
    size: int
    producers: list[str]
    width: int = 1
    norms: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    consumer_width: int = 1
    owner: str | None = None
    depthwise: list[str] = field(default_factory=list)


def get_module(root: nn.Module, name: str) -> Any:
    module: Any = root
    for part in name.split("."):
        module = getattr(module, part)
    return module


# ---------------------------------------------------------------------------------------------------------------
# What an op does to the channels it reads
# ---------------------------------------------------------------------------------------------------------------


def _constant(node: Any, modules: Mapping[str, nn.Module], depth: int = 0) -> torch.Tensor | None:
    """The value of a converted ONNX graph's node computed from constants only (the legacy exporter computes a
    Pad's pads from Constant nodes), or None if it reads an input."""
    if not isinstance(node, torch.fx.Node):
        return node if isinstance(node, torch.Tensor) else None
    if node.op == "get_attr":  # an initializer
        value: Any = get_module(modules[""], str(node.target))
        return value.detach() if isinstance(value, torch.Tensor) else None
    if node.op != "call_module" or depth > 32:
        return None
    module = modules[str(node.target)]
    if not type(module).__name__.startswith("Onnx"):
        return None
    args = [_constant(arg, modules, depth + 1) if isinstance(arg, torch.fx.Node) else arg for arg in node.args]
    if any(arg is None for arg in args):
        return None
    with torch.no_grad():
        result = module(*args)
    return result if isinstance(result, torch.Tensor) else None


def _pads_spatial_module(node: torch.fx.Node, module: nn.Module, modules: Mapping[str, nn.Module]) -> bool:
    """Whether an onnx2torch Pad (or ``nn.ZeroPad2d``/``ConstantPad``) pads only the spatial dims."""
    if isinstance(module, nn.ZeroPad2d | nn.ConstantPad1d | nn.ConstantPad2d):
        return True  # they pad the last one or two dims
    name = type(module).__name__
    if name == "OnnxPadStatic":  # torch order: the last dim first, batch and channel last
        pads = list(getattr(module, "pads", []))
        return len(pads) <= 4 or not any(pads[-4:])
    if name == "OnnxPadDynamic" and len(node.args) > 1:
        value = _constant(node.args[1], modules)
        if value is None:
            return False
        pads = [int(v) for v in value.flatten().tolist()]  # ONNX order: begins of every dim, then ends
        half = len(pads) // 2
        return len(pads) >= 4 and not any(pads[:2] + pads[half:half + 2])
    return False


def _pads_spatial_dims(node: torch.fx.Node, rank: int) -> bool:
    """Whether `node` pads only the spatial dims of a conv output of `rank` dims (each channel stays put)."""
    if node.target not in (F.pad, torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default):
        return False
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    return isinstance(pad, (list, tuple)) and len(pad) <= 2 * (rank - 2)


def _is_scalar(arg: Any, modules: Mapping[str, nn.Module]) -> bool:
    if isinstance(arg, (int, float)):
        return True
    value = _constant(arg, modules) if isinstance(arg, torch.fx.Node) else None
    return value is not None and value.numel() == 1


def is_depthwise(conv: Any, channels: int) -> bool:
    return bool(conv.groups == conv.in_channels == conv.out_channels == channels)


def _is_flatten(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        ok = node.target is torch.flatten or str(node.target) == "aten.flatten.using_ints"
    elif node.op == "call_method":
        ok = node.target == "flatten"
    else:
        return False
    return bool(ok and (tuple(node.args[1:2]) == (1,) or node.kwargs.get("start_dim") == 1))


def _is_binary(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__ in _BINARY_ONNX_MODULES
    if node.op == "call_function":
        return str(node.target) in _BINARY_ATEN or getattr(node.target, "__name__", "") in _BINARY_NAMES
    return node.op == "call_method" and node.target in ("add", "sub", "mul", "div")


def _passes_channels(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """An op of one tensor that keeps every channel where it was (its other arguments are not tensors)."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        return isinstance(module, _PASS_MODULES) or type(module).__name__ in _PASS_ONNX_MODULES
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS or str(node.target) in _PASS_ATEN
    return node.op == "call_method" and node.target in _PASS_METHODS


def _reads_batch_size_only(node: torch.fx.Node) -> bool:
    """``x.size(0)`` / ``aten.sym_size.int(x, 0)``: reads no channel."""
    if node.op == "call_function" and str(node.target) == "aten.sym_size.int":
        return tuple(node.args[1:2]) == (0,)
    return node.op == "call_method" and node.target == "size" and tuple(node.args[1:2]) == (0,)


# ---------------------------------------------------------------------------------------------------------------
# Channel spaces
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Space:
    kind: Literal["channels", "neurons"]
    size: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    blocked: str | None = None


class _Spaces:
    """Union-find over channel spaces; a node's value is (space id, flattened)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.spaces: list[_Space] = []

    def new(self, space: _Space) -> int:
        self.parent.append(len(self.parent))
        self.spaces.append(space)
        return len(self.parent) - 1

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def get(self, index: int) -> _Space:
        return self.spaces[self.find(index)]

    def block(self, index: int, why: str) -> None:
        space = self.get(index)
        space.blocked = space.blocked or why

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        first, second = self.spaces[ra], self.spaces[rb]
        self.parent[rb] = ra
        for name in ("producers", "norms", "depthwise", "consumers"):
            getattr(first, name).extend(getattr(second, name))
        if first.kind != second.kind or first.size != second.size:
            first.blocked = first.blocked or f"joins {first.kind} of {first.size} and {second.kind} of {second.size}"
        first.blocked = first.blocked or second.blocked
        return ra

    def roots(self) -> Iterator[_Space]:
        for index, space in enumerate(self.spaces):
            if self.find(index) == index:
                yield space


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)  # type: ignore[func-returns-value]
    return found


def traced_groups(graph: torch.fx.Graph, modules: Mapping[str, nn.Module], claimed: set[str]) -> list[UnitGroup]:
    """The prunable channel spaces of `graph` (whose ``call_module`` targets are in `modules`) as unit groups, in
    the order of their first producer; modules in `claimed` belong to other groups and end any space that
    reaches them."""
    spaces = _Spaces()
    value: dict[torch.fx.Node, tuple[int, bool]] = {}
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")

    def block_all(node: torch.fx.Node, why: str) -> None:
        for arg in _tensor_args(node):
            if arg in value:
                spaces.block(value[arg][0], why)

    for node in graph.nodes:
        inputs = [a for a in _tensor_args(node) if a in value]
        if not inputs and node.op != "call_module":
            continue
        module = modules[str(node.target)] if node.op == "call_module" else None
        first = node.args[0] if node.args else None
        current = value.get(first) if isinstance(first, torch.fx.Node) else None
        others_plain = all(a is first for a in inputs)  # no space read but through the first argument
        # A layer that is sliced (its weights or statistics) must be read at one place; a stateless module (one
        # nn.ReLU a block calls twice, as torchvision's ResNets do) may be called anywhere.
        sliced = isinstance(module, (nn.Linear, *CONV, *BATCH_NORM))
        if module is not None and (str(node.target) in claimed or (sliced and calls[str(node.target)] > 1)):
            block_all(node, f"{node.target} is owned elsewhere or called twice")
            continue
        is_producer = module is not None and (isinstance(module, nn.Linear) or (
            isinstance(module, CONV) and module.groups == 1))
        if is_producer:
            assert module is not None
            if current is not None and others_plain:
                index, flat = current
                space = spaces.get(index)
                if isinstance(module, nn.Linear):
                    if flat and space.kind == "channels" and module.in_features % space.size == 0:
                        space.consumers.append((str(node.target), module.in_features // space.size))
                    elif not flat and space.kind == "neurons" and module.in_features == space.size:
                        space.consumers.append((str(node.target), 1))
                    else:
                        spaces.block(index, f"{node.target} reads it in another layout")
                elif not flat and space.kind == "channels" and module.in_channels == space.size:  # type: ignore[union-attr]
                    space.consumers.append((str(node.target), 1))
                else:
                    spaces.block(index, f"{node.target} reads it in another layout")
            else:
                block_all(node, f"{node.target} reads it with another tensor")
            conv = isinstance(module, CONV)
            size = int(getattr(module, "out_channels" if conv else "out_features"))
            value[node] = (spaces.new(_Space("channels" if conv else "neurons", size, [str(node.target)])), False)
            continue
        if _is_binary(node, modules):  # a residual add, x * scale, x * erf(x), 1 + erf(x), x * 0.5
            operands = list(node.args[:2])
            spaced = [value[a] for a in operands if isinstance(a, torch.fx.Node) and a in value]
            if len(operands) != 2 or any(flat for _, flat in spaced) or not spaced:
                block_all(node, f"{node.name}: an element-wise op of flattened or unknown operands")
            elif len(spaced) == 2:
                value[node] = (spaces.union(spaced[0][0], spaced[1][0]), False)
            elif any(_is_scalar(a, modules) for a in operands if not (isinstance(a, torch.fx.Node) and a in value)):
                value[node] = spaced[0]
            else:
                block_all(node, f"{node.name} combines it with a tensor of no channel space")
            continue
        if current is None or not others_plain:
            block_all(node, f"{node.name} mixes it with another tensor")
            continue
        index, flat = current
        space = spaces.get(index)
        if module is not None and isinstance(module, CONV) and not flat and space.kind == "channels" \
                and is_depthwise(module, space.size):
            space.depthwise.append(str(node.target))
            value[node] = current
        elif module is not None and isinstance(module, BATCH_NORM) and not flat and space.kind == "channels" \
                and module.num_features == space.size:
            space.norms.append(str(node.target))
            value[node] = current
        elif (module is not None and isinstance(module, nn.Flatten) and module.start_dim == 1
              or _is_flatten(node)) and not flat and space.kind == "channels":
            value[node] = (index, True)
        elif not flat and space.kind == "channels" and (
                (module is not None and _pads_spatial_module(node, module, modules))
                or (module is None and _pads_spatial_dims(node, _rank(first)))) or _passes_channels(node, modules):
            value[node] = current
        elif _reads_batch_size_only(node):
            continue
        else:
            spaces.block(index, f"{node.name} ({node.op} {node.target}) is not understood")

    order = {str(n.target): i for i, n in enumerate(graph.nodes) if n.op == "call_module"}

    def in_order(names: Sequence[str]) -> list[str]:
        return sorted(dict.fromkeys(names), key=lambda name: order.get(name, 0))

    groups = []
    for space in spaces.roots():
        widths = {width for _, width in space.consumers}
        if space.blocked or not space.consumers or len(widths) != 1:
            if space.blocked:
                log.debug("structured: %s left whole: %s", space.producers[0], space.blocked)
            continue
        producers = in_order(space.producers)
        groups.append(UnitGroup(space.kind, producers[0], space.size, producers, 1, in_order(space.norms),
                                in_order([name for name, _ in space.consumers]), widths.pop(),
                                depthwise=in_order(space.depthwise)))
    return sorted(groups, key=lambda g: order.get(g.name, 0))


def _rank(node: Any) -> int:
    """Dims of a node's value when its metadata says (export), else 4 (an image CNN's [b, C, H, W])."""
    meta = getattr(node, "meta", {}).get("val") if isinstance(node, torch.fx.Node) else None
    return int(meta.dim()) if isinstance(meta, torch.Tensor) else 4


# ---------------------------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------------------------


def exported_graph(root: nn.Module, example: Mapping[str, torch.Tensor]) -> torch.fx.GraphModule | None:
    """The lifted graph of `root` exported on `example` (in eval mode, so batch norms use their statistics):
    its Linear/Conv/BatchNorm modules carry `root`'s module names, so the groups found in it apply to `root`."""
    from deepopt_core.passes.finetune.modules import lift

    was = root.training
    root.eval()
    try:
        program = torch.export.export(root, (), kwargs=dict(example), strict=False)
    except Exception as exc:  # noqa: BLE001 (any export failure means: no traced chains)
        log.info("structured: the model cannot be exported to find its chains (%s)", exc)
        return None
    finally:
        root.train(was)
    graph_module: Any = lift(program.module())
    return graph_module  # type: ignore[no-any-return]


def example_inputs(root: nn.Module, data: Sequence[Batch] | None) -> dict[str, torch.Tensor] | None:
    """Inputs to export `root` on, to find the chains of a model ``torch.fx`` cannot trace (a Hugging Face one):
    two rows of the first batch (the forward's own arguments, not labels), or random pixels of the size a
    vision config names."""
    import inspect

    params = inspect.signature(root.forward).parameters
    if data:
        return {k: v[:2] for k, v in data[0].items() if k in params and k != "labels" and torch.is_tensor(v)}
    config = getattr(root, "config", None)
    if config is not None and getattr(root, "main_input_name", None) == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else 224
        return {"pixel_values": torch.randn(2, int(getattr(config, "num_channels", 3)), size, size)}
    return None


def module_groups(root: nn.Module, claimed: set[str], example: Mapping[str, torch.Tensor] | None = None
                  ) -> list[UnitGroup]:
    """The channel-space groups of a module ``torch.fx`` can trace, of a ``torch.export`` graph (lifted), or of
    the graph of `root` exported on `example`."""
    graph_root: nn.Module = root
    if isinstance(root, torch.fx.GraphModule):  # a torch.export program: its graph already holds the chains
        graph = root.graph
    else:
        try:
            graph = torch.fx.symbolic_trace(root).graph
        except Exception as exc:  # noqa: BLE001 (any tracing failure means: no traced chains)
            log.debug("structured: torch.fx cannot trace the model (%s)", exc)
            exported = exported_graph(root, example) if example else None
            if exported is None:
                return []
            graph_root, graph = exported, exported.graph
    return traced_groups(graph, dict(graph_root.named_modules()), claimed)
