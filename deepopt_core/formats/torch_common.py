"""What the torch formats share: finding prunable and quantized weights, counting parameters, running a module.

A torch model in the pipeline is an ``nn.Module`` callable with its inputs positionally, in the order of its
``ModelInfo.inputs``: a TorchScript ``ScriptModule``, the ``GraphModule`` of a ``torch.export`` program, or a
Hugging Face model inside :class:`deepopt_core.formats.hf.HFWrapper`. The helpers here handle all three, before
and after dynamic quantization.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepopt_core.errors import InvalidModel, UnsafeContent
from deepopt_core.formats.torch_archive import TorchFormat, canonical_top, review_torch_archive

log = logging.getLogger("deepopt.formats")

PRUNABLE_KINDS = ("Linear", "NonDynamicallyQuantizableLinear", "Conv1d", "Conv2d", "Conv3d", "Conv1D")
_FX_WEIGHT_OPS = {
    "aten.linear.default", "aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
    "aten.convolution.default", "aten._convolution.default", "aten.conv1d.padding", "aten.conv2d.padding",
}  # fmt: skip


HF_PREFIX = "hf_model."


def _name_as_torch_reads(info: zipfile.ZipInfo) -> str:
    # zipfile decodes names without the UTF-8 flag as cp437; torch's reader hands every name over as UTF-8.
    if info.flag_bits & 0x800:
        return info.orig_filename
    return info.orig_filename.encode("cp437").decode("utf-8", "replace")


def check_torch_archive(path: str | Path, fmt: TorchFormat) -> tuple[Any, list[str]]:
    """Review the archive as torch's own reader resolves it, just before torch loads it.

    :func:`deepopt_core.formats.detect.detect_format` reviewed zipfile's view of the archive. Here the records
    ``torch._C.PyTorchFileReader`` lists (the reader ``torch.jit.load`` and ``torch.export.load`` use) must be
    exactly the members zipfile listed, with the same sizes, and the same review runs again on the bytes torch's
    reader returns: a file built so that the two readers disagree is refused.

    Args:
        path: the archive.
        fmt: ``"torchscript"`` or ``"torch_export"``.

    Returns:
        (the reader, its record names without the archive folder), for checks of record contents.

    Raises:
        UnsafeContent: ambiguous names, the two readers disagreeing, or what the review refuses.
        InvalidModel: an archive neither reader can list.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            zip_view = {_name_as_torch_reads(info): info.file_size for info in archive.infolist()}
            names = [info.orig_filename for info in archive.infolist()]
        top = canonical_top(names)
        reader = torch._C.PyTorchFileReader(str(path))
        records = list(reader.get_all_records())
        torch_view = {f"{top}/{record}": int(reader.get_record_size(record)) for record in records}
    except (zipfile.BadZipFile, RuntimeError, UnicodeDecodeError, OSError) as exc:
        raise InvalidModel(f"the archive cannot be read: {str(exc).splitlines()[0][:300]}") from None
    if len(torch_view) != len(records) or torch_view != zip_view:
        raise UnsafeContent("ambiguous member names: torch's reader lists other members than the archive's "
                            "directory; re-save the model with torch.jit.save or torch.export.save")
    review_torch_archive(fmt, list(torch_view), lambda name: bytes(reader.get_record(name[len(top) + 1:])))
    return reader, records


def unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face model inside a wrapper, else the module itself (names are reported relative to it)."""
    if getattr(type(module), "is_hf_wrapper", False):
        return module.hf_model  # type: ignore[return-value]
    return module


def is_script(module: Any) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def is_graph(module: Any) -> bool:
    return isinstance(module, torch.fx.GraphModule)



def computes_with_sizes(module: Any) -> bool:
    """Whether `module` is a ``torch.export`` graph that computes with symbolic sizes (``aten.sym_size`` and the
    arithmetic on it, recorded with a ``SymInt`` value by export)."""
    if not is_graph(module):
        return False
    return any(node.op == "call_function" and isinstance(node.meta.get("val"), torch.SymInt | torch.SymFloat
                                                          | torch.SymBool)
               for node in module.graph.nodes)


def kind_of(module: nn.Module) -> str:
    """Class name of a module; for TorchScript, the name of the Python class it was compiled from."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return type(module).__name__


def prunable_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """Float weights of Linear/Conv layers, by layer name (``fc1``); never biases or embeddings."""
    module = unwrap(module)
    found: dict[str, torch.Tensor] = {}
    if is_graph(module):
        graph: Any = module.graph
        for node in graph.nodes:
            # aten.addmm(bias, x, weight): transformers' Conv1D (GPT-2), its weight [in, out].
            addmm = str(node.target) == "aten.addmm.default" and len(node.args) == 3 and not node.kwargs
            if node.op == "call_function" and (str(node.target) in _FX_WEIGHT_OPS or addmm) and len(node.args) > 1:
                weight = node.args[2] if addmm else node.args[1]
                if getattr(weight, "op", None) == "get_attr":
                    tensor = get_attr(module, str(weight.target))
                    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dim() >= 2:
                        found[str(weight.target).removesuffix(".weight").removeprefix(HF_PREFIX)] = tensor
        # A graph may also call Linear/Conv submodules (a lifted program, an ONNX model converted to torch).
    for name, sub in module.named_modules():
        if kind_of(sub) in PRUNABLE_KINDS:
            weight = getattr(sub, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.dim() >= 2:
                found[name.removeprefix(HF_PREFIX)] = weight
    return found


def get_attr(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _script_packed_params(module: torch.jit.ScriptModule) -> Iterator[tuple[str, Any]]:
    """Packed quantized Linear params inside a TorchScript module: ``_packed_params`` of traced quantized Linear
    modules, and the ``*_packed_weight_*`` attributes that graph-mode quantization attaches."""
    for prefix, sub in module.named_modules():
        names = {"_packed_params"}
        for method in sub._c._method_names():
            try:
                graph = sub._c._get_method(method).graph
            except RuntimeError:
                continue
            names.update(n.s("name") for n in graph.nodes() if n.kind() == "prim::GetAttr")
        for attr in sorted(names):
            if not sub._c.hasattr(attr):
                continue
            value = sub._c.getattr(attr)
            if isinstance(value, torch.ScriptObject) and "PackedParams" in str(value._type()):
                layer = prefix.removesuffix("._packed_params").removesuffix("_packed_params")
                if attr != "_packed_params":
                    layer = f"{layer}.{attr}" if layer else attr
                yield layer.removeprefix(HF_PREFIX), value


def quantized_weights(module: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Quantized Linear weights (and biases) by layer name, from eager dynamic modules or TorchScript packs."""
    module = unwrap(module)
    found: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    if is_script(module):
        for name, packed in _script_packed_params(module):  # type: ignore[arg-type]
            try:
                weight, bias = torch.ops.quantized.linear_unpack(packed)
            except RuntimeError:
                continue
            found[name] = (weight, bias)
        return found
    for name, sub in module.named_modules():
        weight_fn = getattr(sub, "weight", None)
        if callable(weight_fn) and not isinstance(weight_fn, torch.Tensor) and hasattr(sub, "_packed_params"):
            weight = weight_fn()
            bias_fn = getattr(sub, "bias", None)
            bias = bias_fn() if callable(bias_fn) else None
            if isinstance(weight, torch.Tensor) and weight.is_quantized:
                found[name] = (weight, bias)
    return found


def zeros_of_quantized(weight: torch.Tensor) -> tuple[int, int]:
    """(zeros, total) of a quantized tensor: elements whose integer value equals the zero point."""
    values = weight.int_repr()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                            torch.per_channel_affine_float_qparams):
        shape = [1] * values.dim()
        axis = weight.q_per_channel_axis()
        shape[axis] = values.shape[axis]
        zero_points = weight.q_per_channel_zero_points().reshape(shape)
    else:
        zero_points = torch.tensor(weight.q_zero_point())
    return int((values == zero_points).sum()), values.numel()


def count_parameters(module: nn.Module) -> int:
    """Elements of parameters plus those of quantized weights and biases (which are not parameters).

    Weight-only quantized layers (``qweight`` buffers or ``*_qweight`` attributes, as the quantize pass writes
    them) count their weights' elements: a packed 4-bit byte holds two. A frozen TorchScript module, which has no
    parameters left, counts the float tensors its graph reads as constants.
    """
    module = unwrap(module)
    total = sum(p.numel() for p in module.parameters())
    for weight, bias in quantized_weights(module).values():
        total += weight.numel() + (bias.numel() if bias is not None else 0)
    buffers = dict(module.named_buffers())
    for name, value in buffers.items():
        if name.rpartition(".")[2] == "qweight":
            total += _packed_elements(value)
            bias = buffers.get(name.removesuffix("qweight") + "bias")
            total += bias.numel() if isinstance(bias, torch.Tensor) else 0
    if total == 0 and is_script(module):
        total += _frozen_elements(module)  # type: ignore[arg-type]
    return int(total)


def _packed_elements(value: torch.Tensor) -> int:
    return value.numel() * (2 if value.dtype == torch.uint8 else 1)


def _frozen_elements(module: torch.jit.ScriptModule) -> int:
    try:
        graph: Any = module.graph
    except (RuntimeError, AttributeError):
        return 0
    total = 0
    for node in graph.findAllNodes("prim::Constant"):
        value = node.output()
        if isinstance(value.type(), torch._C.TensorType):
            tensor = value.toIValue()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dim() > 0:
                total += tensor.numel()
    for node in graph.findAllNodes("prim::GetAttr"):
        name = node.s("name")
        if name.endswith("_qweight") and module._c.hasattr(name):
            value = module._c.getattr(name)
            total += _packed_elements(value) if isinstance(value, torch.Tensor) else 0
    return total


def module_kinds(module: nn.Module) -> dict[str, int]:
    """Counts of leaf module kinds (``Linear``: 3), or of called ops for a ``torch.export`` graph."""
    module = unwrap(module)
    counts: Counter[str] = Counter()
    if is_graph(module):
        graph: Any = module.graph
        for node in graph.nodes:
            if node.op == "call_function":
                counts[str(node.target).removesuffix(".default")] += 1
    else:
        for _, sub in module.named_modules():
            if not any(True for _ in sub.children()):
                counts[kind_of(sub)] += 1
    return dict(sorted(counts.items()))


def to_tensors(feed: dict[str, np.ndarray], names: list[str]) -> list[torch.Tensor]:
    """Inputs in `names` order as tensors (missing optional inputs are left out at the end)."""
    return [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in names if name in feed]


def flatten_outputs(value: Any) -> list[np.ndarray]:
    """Tensors of a module's output (tensor, tuple, list, dict, ModelOutput), in order, as numpy arrays."""
    if isinstance(value, torch.Tensor):
        tensor = value.dequantize() if value.is_quantized else value
        return [tensor.detach().cpu().float().numpy() if tensor.dtype == torch.bfloat16 else
                tensor.detach().cpu().numpy()]
    if isinstance(value, dict):
        return [array for item in value.values() for array in flatten_outputs(item)]
    if isinstance(value, list | tuple):
        return [array for item in value for array in flatten_outputs(item)]
    return []


def run_module(module: nn.Module, feed: dict[str, np.ndarray], names: list[str], device: str = "cpu"
               ) -> list[np.ndarray]:
    """Run `module` on `feed` (inputs in `names` order) without autograd; return its outputs as arrays.

    On a GPU the call is synchronised, so that timing it measures the work and not the launch.
    """
    with torch.inference_mode():
        tensors = to_tensors(feed, names)
        if device != "cpu":
            tensors = [t.to(device) for t in tensors]
        outputs = module(*tensors)
        if device != "cpu":
            torch.cuda.synchronize()
        return flatten_outputs(outputs)
