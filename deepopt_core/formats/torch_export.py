"""``torch.export`` programs (.pt2): inspect, load and save.

``torch.export.load`` can unpickle parts of an archive (pickled weights and constants, custom objects, and sample
inputs when a restricted load fails) and dlopen an AOTInductor package. Before it runs,
:func:`deepopt_core.formats.detect.detect_format` has refused such archives on zipfile's view of them;
:func:`load_program` reviews them again as torch's own reader resolves them
(:func:`deepopt_core.formats.torch_common.check_torch_archive`) and checks that the sample inputs load with
``torch.load(weights_only=True)``, so the fallback to a full unpickle can never happen.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepopt_core.errors import InvalidModel, UnsafeContent
from deepopt_core.formats.detect import detect_format
from deepopt_core.formats.torch_common import (
    check_torch_archive,
    computes_with_sizes,
    count_parameters,
    prunable_params,
    to_tensors,
)
from deepopt_core.specs import ModelInfo, TensorInfo

log = logging.getLogger("deepopt.formats")


def _check_sample_inputs(reader: Any, records: list[str]) -> None:
    # After check_torch_archive the only .pt records left are the sample inputs, which torch.export.load would
    # unpickle without restriction if a restricted load failed: check that one succeeds, on torch's own bytes.
    for record in records:
        if record.lower().endswith(".pt"):
            try:
                torch.load(io.BytesIO(bytes(reader.get_record(record))), weights_only=True, map_location="cpu")
            except Exception as exc:
                raise UnsafeContent(
                    f"the .pt2 sample inputs are not plain tensors (a restricted load failed: {exc})"
                ) from None


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """Check the archive (no pickles, no native code, as zipfile and as torch's reader see it) and
    ``torch.export.load`` it.

    Raises:
        UnsafeContent: ambiguous names, pickled payloads, AOTInductor packages, or sample inputs that are not
            plain tensors.
        InvalidModel: the archive cannot be loaded.
    """
    path = Path(path)
    if detect_format(path) != "torch_export":
        raise InvalidModel("not a torch.export (.pt2) archive")
    _check_sample_inputs(*check_torch_archive(path, "torch_export"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as exc:  # torch raises many kinds on malformed archives
        raise InvalidModel(f"the .pt2 archive cannot be loaded: {str(exc).splitlines()[0][:300]}") from None


def load_torch_export(path: str | Path) -> torch.nn.Module:
    """The program's module (a ``GraphModule`` taking the user inputs positionally)."""
    return load_program(path).module()


def _dims(value: Any) -> list[int | str | None] | None:
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    return [str(d) if isinstance(d, torch.SymInt) else int(d) for d in shape]


def _dtype(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "unknown"


def inspect_torch_export(path: str | Path) -> ModelInfo:
    """Describe a .pt2 program: user inputs and outputs from the placeholders' fake-tensor metadata
    (symbolic dimensions as strings such as ``"s31"``), parameter count, aten op counts."""
    program = load_program(path)
    signature = program.graph_signature
    user_inputs = list(signature.user_inputs)
    nodes = {node.name: node for node in program.graph.nodes}
    inputs = []
    for name in user_inputs:
        node = nodes.get(name)
        value = node.meta.get("val") if node is not None else None
        inputs.append(TensorInfo(name=_input_name(node, name), shape=_dims(value), dtype=_dtype(value)))
    outputs = []
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    returned = output_node.args[0] if output_node.args else ()
    for index, item in enumerate(returned if isinstance(returned, list | tuple) else (returned,)):
        value = item.meta.get("val") if hasattr(item, "meta") else None
        outputs.append(TensorInfo(name=getattr(item, "name", f"output_{index}"), shape=_dims(value),
                                  dtype=_dtype(value)))
    ops: Counter[str] = Counter(
        str(n.target).removesuffix(".default") for n in program.graph.nodes if n.op == "call_function"
    )
    module = program.module()
    return ModelInfo(
        format="torch_export",
        inputs=inputs,
        outputs=outputs,
        num_parameters=count_parameters(module),
        op_types=dict(sorted(ops.items())),
        prunable_layers=len(prunable_params(module)),
        details={
            "range_constraints": {str(k): str(v) for k, v in program.range_constraints.items()},
            "computes_with_sizes": computes_with_sizes(module),
            "size_bytes": os.path.getsize(path),
        },
    )


def _input_name(node: Any, fallback: str) -> str:
    # The placeholder's target is the forward() argument name; its node name may carry a suffix.
    target = getattr(node, "target", None)
    return str(target) if isinstance(target, str) and target else fallback


def save_torch_export(module: torch.nn.Module, path: str | Path, example: dict[str, np.ndarray], names: list[str],
                      *, symbolic: dict[str, list[int]] | None = None) -> Path:
    """``torch.export.export`` `module` on `example` and save it as .pt2.

    Args:
        module: the module (inputs positionally, in `names` order).
        path: the .pt2 file to write.
        example: example inputs by name.
        names: input order.
        symbolic: input name -> axes to keep dynamic (default: axis 0 of every input). Falls back to static
            shapes when export cannot keep them dynamic.

    Raises:
        RuntimeError: the module cannot be exported (e.g. dynamically quantized modules).
    """
    path = Path(path)
    args = tuple(to_tensors(example, names))
    used = [n for n in names if n in example]
    axes = symbolic if symbolic is not None else {n: [0] for n in used}
    # DYNAMIC lets export keep the range the module allows (a re-exported program keeps its own bounds).
    dynamic: Any = tuple({axis: torch.export.Dim.DYNAMIC for axis in axes.get(n, []) if axis < arg.dim()}
                         for n, arg in zip(used, args, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(module, args, dynamic_shapes=dynamic)
        except Exception:
            log.warning("export with dynamic shapes failed; exporting with the example's static shapes",
                        exc_info=True)
            program = torch.export.export(module, args)
    torch.export.save(program, str(path))
    return path
