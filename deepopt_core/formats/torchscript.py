"""TorchScript archives: inspect, load and save.

``torch.jit.load`` reads the archive's pickles with TorchScript's own restricted unpickler (TorchScript types and
tensors only, no Python globals); before it runs, the archive's names, pickles and code are reviewed
(:mod:`deepopt_core.formats.torch_archive`). Input shapes come from the traced example inputs the archive keeps
(``traced_inputs.pkl``), read by :mod:`deepopt_core.formats.pickle_meta` without unpickling; scripted modules, or
traced ones saved without them, get ``shape=None``.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepopt_core.errors import InvalidModel
from deepopt_core.formats.detect import detect_format
from deepopt_core.formats.pickle_meta import TensorMeta, traced_input_metas
from deepopt_core.formats.torch_common import (
    check_torch_archive,
    count_parameters,
    is_graph,
    module_kinds,
    prunable_params,
    to_tensors,
)
from deepopt_core.specs import ModelInfo, TensorInfo

log = logging.getLogger("deepopt.formats")
_MAX_TRACED_INPUTS_BYTES = 64 * 1024 * 1024


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Check the archive (as zipfile and as torch's reader see it, see
    :mod:`deepopt_core.formats.torch_archive`), then ``torch.jit.load`` it on the CPU, in eval mode.

    Raises:
        UnsafeContent: ambiguous names, pickles with globals TorchScript never writes, code that reads files or
            calls ops outside aten/prim/quantized, native code.
        InvalidModel: not a TorchScript archive, or it cannot be loaded.
    """
    if detect_format(path) != "torchscript":
        raise InvalidModel("not a TorchScript archive")
    check_torch_archive(path, "torchscript")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise InvalidModel(f"the TorchScript archive cannot be loaded: {str(exc).splitlines()[0]}") from None
    return module.eval()


def traced_inputs(path: str | Path) -> list[TensorMeta] | None:
    """Dtypes and shapes of the example inputs a traced module was traced with, if the archive has them."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[1] == "traced_inputs.pkl":
                    if info.file_size > _MAX_TRACED_INPUTS_BYTES:
                        return None
                    return traced_input_metas(archive.read(info))
    except (zipfile.BadZipFile, OSError):
        return None
    return None


def _schema(module: torch.jit.ScriptModule) -> Any:
    return module.forward.schema  # type: ignore[attr-defined]


def input_names(module: torch.jit.ScriptModule) -> list[str]:
    """Names of the arguments of ``forward`` (without ``self``)."""
    return [argument.name for argument in _schema(module).arguments[1:]]


def float32_ops(module: Any) -> list[str]:
    """The ops of a TorchScript graph that make float32 tensors whatever the weights' dtype (``aten::zeros`` or
    ``aten::to`` with a constant ``dtype=torch.float32``, a float32 tensor constant): a trace of a transformer
    writes its attention mask so, and a copy of the model in float16 then meets float32 activations."""
    found: set[str] = set()
    for node in module.inlined_graph.nodes():
        kind = node.kind()
        if kind == "prim::Constant":
            if node.output().type().kind() == "TensorType" and node.output().toIValue().dtype == torch.float32:
                found.add("a float32 tensor constant")
            continue
        if not kind.startswith("aten::"):
            continue
        try:
            arguments = torch._C.parse_schema(node.schema()).arguments
        except RuntimeError:  # an op without a schema (prim ops): no dtype argument
            continue
        for value, argument in zip(node.inputs(), arguments, strict=False):
            if argument.name == "dtype" and value.node().kind() == "prim::Constant" and value.toIValue() == 6:
                found.add(kind)  # 6: torch.float32's ScalarType
    return sorted(found)[:32]


def inspect_torchscript(path: str | Path) -> ModelInfo:
    """Describe a TorchScript archive: inputs (names from ``forward``, shapes from traced inputs), parameters.

    The first dimension of traced shapes is reported as ``"batch"`` (traced modules are usually batch
    polymorphic); the exact traced shapes are in ``details["traced_input_shapes"]``.
    """
    module = load_torchscript(path)
    names = input_names(module)
    metas = traced_inputs(path)
    inputs: list[TensorInfo] = []
    for index, name in enumerate(names):
        meta = metas[index] if metas and index < len(metas) else None
        if meta is None:
            inputs.append(TensorInfo(name=name, shape=None, dtype="float32"))
            continue
        shape: list[int | str | None] = list(meta.shape)
        if shape:
            shape[0] = "batch"
        inputs.append(TensorInfo(name=name, shape=shape, dtype=meta.dtype))
    returns = _schema(module).returns
    outputs = [TensorInfo(name=f"output_{i}", shape=None) for i in range(max(len(returns), 1))]
    return ModelInfo(
        format="torchscript",
        inputs=inputs,
        outputs=outputs,
        num_parameters=count_parameters(module),
        op_types=module_kinds(module),
        prunable_layers=len(prunable_params(module)),
        details={
            "float32_ops": float32_ops(module),
            "traced": metas is not None,
            "traced_input_shapes": [list(m.shape) for m in metas] if metas else None,
            "forward_schema": str(_schema(module)),
            "size_bytes": os.path.getsize(path),
        },
    )


def save_torchscript(module: torch.nn.Module, path: str | Path, example: dict[str, np.ndarray],
                     names: list[str]) -> Path:
    """Save a ScriptModule as is; trace any other module on `example` (inputs in `names` order) first.

    Raises:
        RuntimeError: tracing failed (the caller turns it into a failed pass).
    """
    path = Path(path)
    scripted: Any = module
    if not isinstance(module, torch.jit.ScriptModule):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if not is_graph(module):  # torch.export graph modules refuse train()/eval(); they are inference-only
                module = module.eval()
            scripted = torch.jit.trace(module, tuple(to_tensors(example, names)), strict=False, check_trace=False)
    scripted.save(str(path))
    return path
