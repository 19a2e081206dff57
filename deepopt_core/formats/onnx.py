"""ONNX files: load, save, and export PyTorch models to ONNX.

Export tries the legacy TorchScript-based exporter first (``dynamo=False``: fast, and it handles TorchScript
modules), with the symbolic dimensions of the source model as dynamic axes; if that fails it falls back to the
dynamo exporter. ``torch.export`` graph modules are traced to TorchScript first (the legacy exporter cannot switch
them to eval mode), unless they compute with symbolic sizes: a trace records those as the example's numbers, so only
the dynamo exporter, which re-exports the program with its dimensions symbolic, keeps them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deepopt_core.formats.onnx_inspect import load_onnx
from deepopt_core.specs import TensorInfo

log = logging.getLogger("deepopt.formats")
_TWO_GB = 2**31 - 1
DYNAMO_OPSET = 18  # the lowest opset torch's dynamo exporter writes; it converts its graph to a lower one asked for


def load_onnx_model(path: str | Path) -> onnx.ModelProto:
    """Parse an ONNX file (single file; see :func:`deepopt_core.formats.onnx_inspect.load_onnx`)."""
    return load_onnx(path)


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save as one file.

    Raises:
        ValueError: the model is larger than protobuf's 2 GB limit.
    """
    path = Path(path)
    if model.ByteSize() > _TWO_GB:
        raise ValueError("the model is larger than 2 GB, which one ONNX file cannot hold")
    onnx.save(model, str(path))
    return path


def _dynamic_axes(inputs: list[TensorInfo], output_names: list[str], dynamic_batch: bool,
                  output_ranks: list[int]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    has_sequence = False
    for tensor in inputs:
        dims: dict[int, str] = {}
        for axis, dim in enumerate(tensor.shape or []):
            if isinstance(dim, int):
                continue
            if axis == 0:
                if dynamic_batch:
                    dims[0] = "batch"
            else:
                dims[axis] = str(dim) if dim else f"{tensor.name}_dim{axis}"
                has_sequence = has_sequence or dim == "sequence"
        if dims:
            axes[tensor.name] = dims
    for name, rank in zip(output_names, output_ranks, strict=True):
        dims = {0: "batch"} if dynamic_batch and rank > 0 else {}
        if has_sequence and rank >= 3:
            dims[1] = "sequence"
        if dims:
            axes[name] = dims
    return axes


def export_to_onnx(module: Any, path: str | Path, example: dict[str, np.ndarray], inputs: list[TensorInfo], *,
                   opset: int = 17, dynamic_batch: bool = True,
                   output_names: list[str] | None = None) -> onnx.ModelProto:
    """Export a torch module (inputs positionally, in `inputs` order) to an ONNX file and return the model.

    Args:
        module: ScriptModule, ``torch.export`` GraphModule, or eager module (e.g. a Hugging Face wrapper).
        path: where to write the .onnx file.
        example: example inputs by name (one batch).
        inputs: the source model's inputs: names, order, and which dimensions are symbolic.
        opset: ONNX opset version.
        dynamic_batch: export the first dimension as a symbolic ``batch``.
        output_names: names for the outputs (defaults: the source's, else ``output_<i>``).

    Raises:
        RuntimeError: both exporters failed (the message has both reasons).
    """
    import torch

    from deepopt_core.formats.torch_common import computes_with_sizes, is_graph, run_module, to_tensors

    path = Path(path)
    names = [t.name for t in inputs if t.name in example]
    args = tuple(to_tensors(example, names))
    outputs = run_module(module, example, names)
    if output_names is None or len(output_names) != len(outputs):
        wrapper_names = list(getattr(module, "output_names", []) or [])
        output_names = wrapper_names if len(wrapper_names) == len(outputs) else [f"output_{i}" for i in
                                                                                   range(len(outputs))]
    used_inputs = [t for t in inputs if t.name in names]
    axes = _dynamic_axes(used_inputs, output_names, dynamic_batch, [o.ndim for o in outputs])
    # A trace of a program that reads its inputs' sizes (the class token expanded to the batch, attention reshaped
    # into heads of each row) keeps the example's sizes as constants: its legacy export runs on no other shape.
    trace_keeps_shapes = not (axes and computes_with_sizes(module))
    subject = module
    if is_graph(module) and trace_keeps_shapes:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            subject = torch.jit.trace(module, args, strict=False, check_trace=False)
    errors = [] if trace_keeps_shapes else ["legacy exporter: not used, a trace of this torch.export program would "
                                            "fix its symbolic dimensions to the example's sizes"]
    for dynamo in (False, True) if trace_keeps_shapes else (True,):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if dynamo:
                    shapes = _dynamo_shapes(used_inputs, axes, args) if axes else None
                    program = _dynamo_export(module, args, names, opset, shapes)
                    _name_outputs(program.model, output_names)
                    program.save(str(path), external_data=True)
                else:
                    torch.onnx.export(subject, args, str(path), input_names=names, output_names=output_names,
                                      opset_version=opset, dynamo=False, dynamic_axes=axes)
            model = onnx.load(str(path))
            log.info("exported to ONNX with the %s exporter (opset %d)", "dynamo" if dynamo else "legacy", opset)
            return model
        except Exception as exc:  # the exporters raise many kinds; keep both reasons
            log.warning("%s ONNX export failed: %s", "dynamo" if dynamo else "legacy", str(exc)[:500])
            errors.append(f"{'dynamo' if dynamo else 'legacy'} exporter: {str(exc).splitlines()[0][:300]}")
    raise RuntimeError("ONNX export failed; " + "; ".join(errors))


def _dynamo_export(module: Any, args: tuple[Any, ...], names: list[str], opset: int, shapes: Any) -> Any:
    """The dynamo exporter's ONNXProgram at `opset`, or at its own lowest opset when torch's conversion down to
    `opset` writes a graph the ONNX checker refuses (onnx's version converter keeps ``Split``'s opset-18
    ``num_outputs`` in an opset-17 graph); the opset written is in the graph, and the export pass reports it."""
    import torch

    program = torch.onnx.export(module, args, input_names=names, opset_version=opset, dynamo=True,
                                dynamic_shapes=shapes)
    assert program is not None  # dynamo=True returns the ONNXProgram
    if opset >= DYNAMO_OPSET:
        return program
    try:
        onnx.checker.check_model(program.model_proto)
        return program
    except onnx.checker.ValidationError as exc:
        log.warning("the dynamo export converted to opset %d fails the ONNX checker (%s); keeping opset %d", opset,
                    str(exc).splitlines()[0][:200], DYNAMO_OPSET)
    return torch.onnx.export(module, args, input_names=names, opset_version=DYNAMO_OPSET, dynamo=True,
                             dynamic_shapes=shapes)


def _name_outputs(model: Any, names: list[str]) -> None:
    """Name the outputs of a dynamo export's graph (an ``onnx_ir`` model) `names`.

    The exporter names inner values after the program's nodes, and a .pt2's outputs are named after its last
    nodes: once a pass appended nodes (an adapter after the classifier), a wanted name is an inner value's, and
    torch's own renaming (``output_names``) writes it twice, which the ONNX checker refuses. That value is
    renamed first.
    """
    from onnxscript import ir

    graph = model.graph
    values = [*graph.inputs, *graph.initializers.values(),
              *(value for node in ir.traversal.RecursiveGraphIterator(graph) for value in node.outputs)]
    taken = {value.name for value in values}
    for output, name in zip(graph.outputs, names, strict=True):
        if output.name == name:
            continue
        for value in values:
            if value.name == name and value is not output:
                suffix = 1
                while f"{name}_{suffix}" in taken:
                    suffix += 1
                value.name = f"{name}_{suffix}"
                taken.add(value.name)
        output.name = name
        taken.add(name)


def _dynamo_shapes(inputs: list[TensorInfo], axes: dict[str, dict[int, str]], args: tuple[Any, ...]) -> Any:
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for tensor, arg in zip(inputs, args, strict=True):
        spec = {}
        for axis, name in axes.get(tensor.name, {}).items():
            if axis < arg.dim():
                dims.setdefault(name, torch.export.Dim(name.replace("-", "_"), min=1, max=65536))
                spec[axis] = dims[name]
        shapes.append(spec)
    return tuple(shapes)
