"""ONNX -> PyTorch: an uploaded ONNX graph as a torch module, for the passes that need gradients or new layers.

The conversion is `onnx2torch <https://github.com/ENOT-AutoDL/onnx2torch>`_ (Apache-2.0, pure Python; it builds a
``torch.fx.GraphModule`` with one submodule per ONNX node and never unpickles anything). On top of it:

* ``Gemm``/``Conv`` nodes with initializer weights already become ``nn.Linear``/``nn.Conv*d``; a ``MatMul`` by a
  2-D initializer (and the ``Add`` of a 1-D initializer after it) becomes an ``nn.Linear`` too, so that the
  methods, which prune and rebuild Linear/Conv layers, see every weight matrix;
* those layers are renamed after their ONNX weights (``fc1.weight`` -> ``fc1``, as the ONNX pruning path and the
  measured sparsity name them; else the node's name), so that ``targets``, ``exclude`` and the decisions use the
  same names on both paths;
* ``Identity`` nodes of initializers (shared weights, as exporters write them) are folded first, so that their
  consumers see constants; onnx2torch's ``Flatten`` for an axis other than 1 is replaced by a correct one,
  opset-16 ``GreaterOrEqual``/``LessOrEqual`` use its opset-12 converters (only types were added), the
  opset-18 ``Reduce*`` ops (axes an input, as the dynamo exporter writes them) have a converter for constant axes,
  and ``Reshape`` with ``allowzero=1`` (the dynamo exporter's) converts when its shape is a constant with no 0;
* which ops and versions convert is known without importing torch
  (:data:`deepopt_core.formats.onnx_torch_ops.CONVERTIBLE_OPS`, checked against onnx2torch's registry by a test),
  so that a graph with an op onnx2torch lacks is refused at submit
  (:func:`deepopt_core.planning.onnx_import_problem`);
* the converted module must reproduce ONNX Runtime's outputs on the job's sample inputs (max abs difference at
  most ``TOLERANCE`` relative to the output scale); a graph with an op onnx2torch lacks, or one that diverges, is
  refused with the reason (:class:`deepopt_core.errors.PassFailed`);
* a graph that computes shapes while it runs (``Shape``/``Size`` ops) with symbolic input dimensions is refused
  before converting, at submit and at run alike (:func:`deepopt_core.planning.onnx_import_problem`, from the
  stored inspection): onnx2torch turns those shapes into Python values, so the export back would fix them;
* after the torch passes, the export back to ONNX must still take another batch size
  (:func:`check_symbolic_batch`): onnx2torch computes some shapes in Python (those of a transformer's attention
  mask), which an export fixes to the sample's. MLPs and CNNs pass; BERT-family exports convert and prune but are
  refused there, with the reason.

onnx2torch imports ``torchvision`` for its NMS and RoiAlign converters only; where torchvision is missing (this
project installs the CPU build of torch, and PyPI's torchvision wheels are CUDA builds), a stand-in whose ops
raise is put in place for the duration of the import and removed afterwards, so that other libraries' checks
for torchvision see the truth.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from deepopt_core.errors import PassFailed

log = logging.getLogger("deepopt.formats")
TOLERANCE = 1e-4
_LAYER_OPS = ("Gemm", "Conv", "MatMul")


def load_converter() -> Any:
    """Import onnx2torch (with the torchvision stand-in where torchvision does not import).

    Raises:
        PassFailed: onnx2torch is not installed.
    """
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        import torchvision  # noqa: F401  (only its presence matters)

        stubbed: list[str] = []
    except Exception:  # missing, or a build for another torch that fails to import
        stubbed = _stub_torchvision()
    try:
        import onnx2torch
    except ImportError as exc:
        raise PassFailed(f"converting ONNX to PyTorch needs the onnx2torch package ({exc}); install it with "
                         "`pip install --no-deps onnx2torch`") from None
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
    _add_aliases()
    return onnx2torch


# Op versions that only widened the types an op takes (bfloat16), so onnx2torch's converter of the earlier version
# converts them too: (op, version without a converter) -> version with one.
_ALIASES = {("GreaterOrEqual", 16): 12, ("LessOrEqual", 16): 12}


def _add_aliases() -> None:
    from onnx2torch.node_converters import registry

    for (op, version), known in _ALIASES.items():
        new = registry.OperationDescription(domain="", operation_type=op, version=version)
        old = registry.OperationDescription(domain="", operation_type=op, version=known)
        if new not in registry._CONVERTER_REGISTRY and old in registry._CONVERTER_REGISTRY:
            registry._CONVERTER_REGISTRY[new] = registry._CONVERTER_REGISTRY[old]
    # torch.greater_equal and torch.less_equal have no symbolic in torch's TorchScript-based ONNX exporter; their
    # short names (aten::ge, aten::le) do, and the model goes back to ONNX through it.
    from onnx2torch.node_converters import comparisons

    comparisons._TORCH_FUNCTION_FROM_ONNX_TYPE.update(
        {"Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge})
    # onnx2torch 1.5.15 computes Flatten wrongly for axis != 1 (it flattens everything first); Hugging Face
    # exports use axis 0 and 2 in their attention-mask code.
    for version in _since_versions("Flatten"):
        registry._CONVERTER_REGISTRY[registry.OperationDescription("", "Flatten", version)] = _convert_flatten
    # The dynamo exporter writes Reshape with allowzero=1, which onnx2torch refuses; for a constant shape with no 0
    # in it the attribute changes nothing (it only says what a 0 means).
    registry._CONVERTER_REGISTRY[registry.OperationDescription("", "Reshape", 14)] = _convert_reshape
    # Opset 18 moved the axes of the Reduce ops (ReduceSum already in 13) from an attribute to an input, and
    # onnx2torch 1.5.15 has no converter for those versions; torch's dynamo exporter writes opset 18.
    for op in _REDUCE_FUNCTIONS:
        for version in _since_versions(op):
            description = registry.OperationDescription("", op, version)
            if version >= 18 and description not in registry._CONVERTER_REGISTRY:
                registry._CONVERTER_REGISTRY[description] = _convert_reduce


def _since_versions(op: str) -> set[int]:
    """The versions of an ai.onnx op that this onnx package defines (each opset maps to one of them)."""
    versions = set()
    for opset in range(1, onnx.defs.onnx_opset_version() + 1):
        try:
            versions.add(onnx.defs.get_schema(op, max_inclusive_version=opset).since_version)
        except onnx.defs.SchemaError:  # the op is newer than this opset
            continue
    return versions


def _convert_flatten(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    axis = int(node.attributes.get("axis", 1))
    module = nn.Flatten(start_dim=1) if axis == 1 else OnnxFlatten(axis)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node))


class OnnxFlatten(nn.Module):
    """ONNX ``Flatten``: a 2-D [prod(dims before axis), prod(dims from axis)] tensor, for any axis."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        if axis == 0:
            return x.reshape(1, -1)
        outer = torch.flatten(x, 0, axis - 1)
        return outer.unsqueeze(-1) if axis == x.dim() else torch.flatten(outer, 1)


def _convert_reshape(node: Any, graph: Any) -> Any:
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.utils.common import OperationConverterResult, get_const_value, onnx_mapping_from_node

    if node.attributes.get("allowzero", 0) == 1:
        try:
            shape = torch.as_tensor(get_const_value(node.input_values[1], graph))
        except KeyError:
            raise NotImplementedError("Reshape with allowzero=1 to a shape computed while the graph runs") from None
        if bool((shape == 0).any()):
            raise NotImplementedError("Reshape with allowzero=1 to a shape with a 0 in it")
    return OperationConverterResult(torch_module=OnnxReshape(), onnx_mapping=onnx_mapping_from_node(node=node))


def _reduce_prod(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    for dim in reversed(dims):  # from the last, so that the dims before it keep their indices
        x = torch.prod(x, dim=dim, keepdim=keepdim)
    return x


_REDUCE_FUNCTIONS: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "ReduceMean": lambda x, dims, keepdim: torch.mean(x, dim=dims, keepdim=keepdim),
    "ReduceMax": lambda x, dims, keepdim: torch.amax(x, dim=dims, keepdim=keepdim),
    "ReduceMin": lambda x, dims, keepdim: torch.amin(x, dim=dims, keepdim=keepdim),
    "ReduceProd": _reduce_prod,
    "ReduceL1": lambda x, dims, keepdim: torch.sum(torch.abs(x), dim=dims, keepdim=keepdim),
    "ReduceL2": lambda x, dims, keepdim: torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keepdim)),
    "ReduceSumSquare": lambda x, dims, keepdim: torch.sum(x * x, dim=dims, keepdim=keepdim),
    "ReduceLogSum": lambda x, dims, keepdim: torch.log(torch.sum(x, dim=dims, keepdim=keepdim)),
    "ReduceLogSumExp": lambda x, dims, keepdim: torch.logsumexp(x, dim=dims, keepdim=keepdim),
}


def _convert_reduce(node: Any, graph: Any) -> Any:
    """An opset-18+ Reduce op whose axes input is a constant (an initializer or a Constant node)."""
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    axes: list[int] | None = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            value = get_const_value(node.input_values[1], graph)
        except KeyError:
            raise NotImplementedError(f"{node.operation_type} with axes computed while the graph runs") from None
        axes = [int(a) for a in torch.as_tensor(value).reshape(-1).tolist()]
    keepdims = bool(node.attributes.get("keepdims", 1))
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        module: nn.Module = nn.Identity()
    else:
        module = OnnxReduce(node.operation_type, axes or None, keepdims)
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=(node.input_values[0],),
                                                             outputs=node.output_values))


class OnnxReduce(nn.Module):
    """An ONNX Reduce op over fixed `axes` (None: all of them; negative ones count from the end)."""

    def __init__(self, operation_type: str, axes: list[int] | None, keepdims: bool):
        super().__init__()
        self.operation_type = operation_type
        self.axes = axes
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(x.dim())) if self.axes is None else sorted({a % x.dim() for a in self.axes})
        return _REDUCE_FUNCTIONS[self.operation_type](x, dims, self.keepdims)


def _stub_torchvision() -> list[str]:
    def missing(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("this ONNX op needs torchvision, which is not installed")

    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        sys.modules.pop(name)  # a half-imported torchvision that failed
    package = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", None)
    ops.nms = ops.box_convert = ops.roi_align = missing  # type: ignore[attr-defined]
    package.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = package, ops
    return ["torchvision", "torchvision.ops"]


def _layer_name(node: onnx.NodeProto, fallback: str) -> str:
    """The name the ONNX path gives the layer (:func:`deepopt_core.sparsity.onnx_layer_name`): the weight's name
    without ``.weight``, else the node's name (dots in it nest modules, as in ``encoder.layer.0``)."""
    weight = node.input[1] if len(node.input) > 1 else ""
    if weight.endswith(".weight") and weight != ".weight":
        return weight.removesuffix(".weight")
    return node.name or fallback


def onnx_to_torch(model: onnx.ModelProto, sample: dict[str, np.ndarray],
                  input_names: list[str]) -> tuple[Any, dict[str, Any]]:
    """Convert `model` to a ``torch.fx.GraphModule`` (inputs positionally, in `input_names` order) and check it.

    Args:
        model: the ONNX model (dense initializers; not modified).
        sample: a batch of inputs by name, run through ONNX Runtime and the converted module.
        input_names: the model's inputs in order.

    Returns:
        (the module in eval mode, its Linear/Conv weights parameters that train, a report for the decisions:
        converter, layers found, max abs difference against ONNX Runtime).

    Raises:
        PassFailed: an op onnx2torch cannot convert, or outputs that differ from ONNX Runtime's.
    """
    from deepopt_core.formats.ort_session import inference_session
    from deepopt_core.formats.torch_common import run_module

    onnx2torch = load_converter()
    model = _fold_identities(model)
    try:
        module = onnx2torch.convert(model)
    except Exception as exc:  # NotImplementedError for unknown ops, and whatever a converter raises
        raise PassFailed(f"the ONNX model cannot be converted to PyTorch: {str(exc).splitlines()[0][:300]}") from None
    layers = _name_layers(module, model)
    module.eval()
    try:
        got = run_module(module, sample, input_names)
    except Exception as exc:
        raise PassFailed(f"the ONNX model converted to PyTorch does not run: {str(exc).splitlines()[0][:300]}"
                         ) from None
    session = inference_session(model.SerializeToString())
    expected = session.run(None, {i.name: sample[i.name] for i in session.get_inputs()})
    if len(got) != len(expected) or any(np.shape(a) != np.shape(b) for a, b in zip(got, expected, strict=False)):
        raise PassFailed("the ONNX model converted to PyTorch returns outputs of other shapes than ONNX Runtime")
    diff = max((float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                for a, b in zip(got, expected, strict=True) if np.size(a)), default=0.0)
    scale = max((float(np.abs(np.asarray(e, np.float64)).max()) for e in expected if np.size(e)), default=1.0)
    if not diff <= TOLERANCE * max(1.0, scale):
        raise PassFailed(f"the ONNX model converted to PyTorch differs from ONNX Runtime by up to {diff:.3g} "
                         f"(allowed {TOLERANCE * max(1.0, scale):.3g}); the torch methods cannot run on it")
    return module, {"converter": f"onnx2torch {getattr(onnx2torch, '__version__', '')}".strip(),
                    "converted_layers": layers, "max_abs_diff_vs_onnxruntime": diff}


def check_symbolic_batch(exported: onnx.ModelProto, module: Any, sample: dict[str, np.ndarray], info: Any) -> None:
    """Check that the ONNX export of a converted module still takes another batch size (when the upload's first
    dimension is symbolic): onnx2torch computes shapes in Python, so an export may keep the sample's shapes.

    Raises:
        PassFailed: the exported graph fails or differs from the torch module on a batch of twice the sample's rows.
    """
    from deepopt_core.formats.ort_session import inference_session
    from deepopt_core.formats.torch_common import run_module

    names = [t.name for t in info.inputs if t.name in sample]
    if not all(t.shape and not isinstance(t.shape[0], int) for t in info.inputs if t.name in sample):
        return
    doubled = {name: np.concatenate([sample[name], sample[name]]) for name in names}
    try:
        expected = run_module(module, doubled, names)
        session = inference_session(exported.SerializeToString())
        got = session.run(None, {i.name: doubled[i.name] for i in session.get_inputs()})
        same = len(got) == len(expected) and all(
            np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(got, expected,
                                                                                                 strict=False))
    except Exception:  # ORT and torch raise their own kinds; either way the graph does not take the batch
        log.info("the export of the converted model fails on another batch size", exc_info=True)
        same = False
    if not same:
        raise PassFailed("the model converted from ONNX exports back with the sample's shapes fixed (onnx2torch "
                         "computes shapes such as those of attention masks in Python), so it would not take other "
                         "batch sizes; the torch methods do not support this ONNX model yet: upload it as PyTorch "
                         "(torch.export or Hugging Face), or use magnitude or N:M pruning, which run on ONNX")


def _fold_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the ``Identity`` nodes of initializers (exporters write shared weights that way): their
    outputs become initializers, so that LayerNorm, MatMul and Gemm see constant weights and convert to modules."""
    inits = {t.name: t for t in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    folds = [n for n in model.graph.node if n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in inits
             and n.output[0] not in graph_outputs]
    if not folds:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    drop = {id(n) for n in folds}
    keep = [n for n in model.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    for node in folds:
        tensor = out.graph.initializer.add()
        tensor.CopyFrom(inits[node.input[0]])
        tensor.name = node.output[0]
    return out


def _name_layers(module: Any, model: onnx.ModelProto) -> list[str]:
    """Turn MatMul(+Add) by initializers into Linear layers and name every Linear/Conv after its ONNX weight."""
    onnx2torch = sys.modules["onnx2torch"]
    graph_nodes = onnx2torch.onnx_graph.OnnxGraph(model.graph).nodes  # unique name -> node, as the converter names
    protos = {name: node.proto for name, node in graph_nodes.items()}
    initializers = {t.name for t in model.graph.initializer}
    gm = module
    changed = False
    for node in list(gm.graph.nodes):
        proto = protos.get(str(node.target)) if node.op == "call_module" else None
        if proto is None or proto.op_type != "MatMul" or len(node.args) != 2:
            continue
        weight_node = node.args[1]
        if getattr(weight_node, "op", None) != "get_attr" or proto.input[1] not in initializers:
            continue
        weight = _get(gm, str(weight_node.target))
        if weight.dim() != 2 or not weight.is_floating_point():
            continue
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False, dtype=weight.dtype)
        linear.weight = nn.Parameter(weight.detach().t().contiguous())
        users = list(node.users)
        add = users[0] if len(users) == 1 else None
        add_proto = protos.get(str(add.target)) if add is not None and add.op == "call_module" else None
        if add is not None and add_proto is not None and add_proto.op_type == "Add" and len(add.args) == 2:
            other = add.args[1] if add.args[0] is node else add.args[0]
            bias = _get(gm, str(other.target)) if getattr(other, "op", None) == "get_attr" else None
            if bias is not None and bias.dim() == 1 and bias.shape[0] == weight.shape[1]:
                linear.bias = nn.Parameter(bias.detach().clone())
                add.replace_all_uses_with(node)
                gm.graph.erase_node(add)
        gm.add_submodule(str(node.target), linear)
        node.args = (node.args[0],)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
    names: list[str] = []
    taken = {name for name, _ in gm.named_modules()}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        layer = gm.get_submodule(str(node.target))
        proto = protos.get(str(node.target))
        if proto is None or proto.op_type not in _LAYER_OPS or not isinstance(layer, nn.Linear | nn.Conv1d |
                                                                              nn.Conv2d | nn.Conv3d):
            continue
        name = _layer_name(proto, str(node.target))
        if name != node.target:
            if name in taken or any(part == "" for part in name.split(".")) or not _move(gm, str(node.target), name):
                name = str(node.target)
            else:
                taken.add(name)
                node.target = name
        names.append(name)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return names


def _get(root: Any, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _move(gm: Any, old: str, new: str) -> bool:
    """Register the root's submodule `old` under the qualified name `new` (containers made as needed); False, and
    nothing changed, when a name on the way is taken by something else."""
    *path, leaf = new.split(".")
    parent: nn.Module = gm
    for part in path:  # check the whole path before changing anything
        child = parent._modules.get(part) if isinstance(parent, nn.Module) else None
        if child is None and hasattr(parent, part):
            return False
        parent = child if child is not None else nn.Module()
    if hasattr(parent, leaf):
        return False
    layer = gm.get_submodule(old)
    delattr(gm, old)  # converter names have no dots: the module sits on the root
    parent = gm
    for part in path:
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    parent.add_module(leaf, layer)
    return True
