"""The ``export`` pass: PyTorch -> ONNX, where the planner puts it (``Track.export_before``).

The exported graph is checked with the ONNX checker and run in ONNX Runtime on the sample inputs against the
PyTorch model; a graph that fails either fails the pass, a numerical mismatch is a warning.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deepopt_core.errors import PassFailed
from deepopt_core.passes.context import PassContext
from deepopt_core.passes.export.config import ExportConfig

log = logging.getLogger("deepopt.passes.export")
TOLERANCE = 1e-3


def _output_names(ctx: PassContext, count: int) -> list[str] | None:
    names = [t.name for t in ctx.info.outputs]
    if len(names) == count and not all(n.startswith("output_") for n in names):
        return names
    return None


def apply_torch(spec: ExportConfig | None, model: Any, ctx: PassContext) -> onnx.ModelProto:
    """Export `model` (inputs positionally, as in ``ctx.info.inputs``) to ONNX and check it.

    Args:
        spec: the export settings (opset, dynamic batch); None for the defaults.
        model: the torch module.
        ctx: sample inputs, workdir, decisions.

    Raises:
        PassFailed: the exporters failed, or the graph fails the checker or ONNX Runtime.
    """
    from deepopt_core.formats.onnx import export_to_onnx
    from deepopt_core.formats.ort_session import inference_session
    from deepopt_core.formats.torch_common import run_module

    spec = spec or ExportConfig()
    expected = run_module(model, ctx.sample, ctx.input_names)
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        path = Path(tmp) / "exported.onnx"
        try:
            exported = export_to_onnx(model, path, ctx.sample, ctx.info.inputs, opset=spec.opset,
                                      dynamic_batch=spec.dynamic_batch,
                                      output_names=_output_names(ctx, len(expected)))
        except RuntimeError as exc:
            raise PassFailed(f"export: {exc}") from None
        ctx.progress(0.6)
        try:
            onnx.checker.check_model(exported)
        except onnx.checker.ValidationError as exc:
            raise PassFailed(f"export: the exported graph fails the ONNX checker: {str(exc)[:300]}") from None
        try:
            session = inference_session(str(path))
            feed = {i.name: ctx.sample[i.name] for i in session.get_inputs()}
            got = session.run(None, feed)
        except Exception as exc:
            raise PassFailed(f"export: ONNX Runtime cannot run the exported graph: {str(exc)[:300]}") from None
        # The dynamo exporter may write weights beside the file; load them into the proto before tmp goes.
        exported = onnx.load(str(path))
    diff = max((float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                for a, b in zip(expected, got, strict=False) if np.shape(a) == np.shape(b) and np.size(a)),
               default=0.0)
    if diff > TOLERANCE * max(1.0, max(float(np.abs(e).max()) for e in expected if np.size(e))):
        ctx.warn(f"export: ONNX Runtime outputs differ from PyTorch by up to {diff:.3g}")
    opset = next((o.version for o in exported.opset_import if o.domain in ("", "ai.onnx")), spec.opset)
    if opset != spec.opset:
        ctx.warn(f"export: the graph is opset {opset}, not {spec.opset}: the dynamo exporter writes opset {opset} "
                 f"at the least and could not convert this graph to {spec.opset}")
    ctx.decisions.update({
        "format": "onnx", "opset": opset, "dynamic_batch": spec.dynamic_batch,
        "inputs": [i.name for i in exported.graph.input], "outputs": [o.name for o in exported.graph.output],
        "max_abs_diff_vs_torch": diff,
    })  # fmt: skip
    ctx.progress(1.0)
    return exported
