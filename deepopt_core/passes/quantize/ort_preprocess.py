"""ONNX Runtime pre-processing before quantization: graph fusion and shape inference.

Quantizers place their quantize/dequantize operations on the graph they are given. On an unfused transformer
export, a linear layer is `MatMul` + `Add`, attention is a dozen small ops and LayerNorm/GELU are spelled out, so
the quantized model keeps paying for all of those ops. Running ONNX Runtime's transformer fusions first
(`Attention`, `SkipLayerNormalization`, `BiasGelu`, `EmbedLayerNormalization`) lets dynamic quantization land on
the fused ops (`QAttention`, `QEmbedLayerNormalization`, `MatMulInteger`) and the runtime then has few, large
kernels to run. Shape inference is what lets the quantizer know which tensors are float.

Measured traps, handled here:

* `quant_pre_process` fails in symbolic shape inference on Hugging Face exports (dynamic `Range`/`Where` shapes);
  it needs `skip_symbolic_shape=True`, and a failed run can leave a large `.data` external-data file behind: we
  run it in a private temporary folder and delete whatever it leaves.
* Attention fusion happens only on an eager-attention export from the legacy TorchScript exporter
  (`attn_implementation="eager"`, `torch.onnx.export(..., dynamo=False)`); SDPA or dynamo graphs keep attention
  unfused (LayerNorm and GELU still fuse).
* Contrib ops produced by fusion have no ONNX shape-inference function, so their outputs are untyped:
  `quantize_dynamic` then needs `extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import onnx

logger = logging.getLogger(__name__)

Fusion = Literal["auto", "full", "no_attention", "none"]
"""`full`: all transformer fusions; `no_attention`: LayerNorm/GELU/bias fusions but attention left as MatMuls
(for static QDQ, whose quantizer has no `Attention` support); `none`; `auto`: `full` on graphs that look like a
transformer (Softmax + LayerNormalization/ReduceMean + MatMul), else `none`."""

_FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op type counts of the main graph."""
    return dict(Counter(node.op_type for node in model.graph.node))


# Element types of the outputs of ONNX Runtime's fused contrib ops (ONNX shape inference leaves them untyped,
# and quantizers skip tensors of unknown type). None: same as the op's first input.
_CONTRIB_OUTPUT_TYPES: dict[str, tuple[int | None, ...]] = {
    "SkipLayerNormalization": (None, None, None, None),
    "SkipSimplifiedLayerNormalization": (None, None, None, None),
    "BiasGelu": (None,),
    "FastGelu": (None,),
    "Gelu": (None,),
    "QuickGelu": (None,),
    "BiasAdd": (None,),
    "Attention": (None, None),
    "MultiHeadAttention": (None, None, None),
    "EmbedLayerNormalization": (onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT),
}


def _type_contrib_outputs(path: Path) -> int:
    """Adds element types (no shapes) for untyped outputs of fused contrib ops, re-running ONNX shape inference
    so that the standard ops after them get typed too, until nothing changes; returns how many were added."""
    model = onnx.load(str(path))
    added = 0
    for _ in range(8):
        known: dict[str, int] = {}
        for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
            if vi.type.tensor_type.elem_type:
                known[vi.name] = vi.type.tensor_type.elem_type
        for init in model.graph.initializer:
            known[init.name] = init.data_type
        new: list[onnx.ValueInfoProto] = []
        for node in model.graph.node:
            spec = _CONTRIB_OUTPUT_TYPES.get(node.op_type) if node.domain == "com.microsoft" else None
            if spec is None:
                continue
            first = known.get(node.input[0]) if node.input else None
            for out, elem in zip(node.output, spec, strict=False):
                elem = elem or first or onnx.TensorProto.FLOAT
                if out and out not in known:
                    new.append(onnx.helper.make_tensor_value_info(out, elem, None))
                    known[out] = elem
        if not new:
            break
        added += len(new)
        names = {vi.name for vi in new}
        kept = [vi for vi in model.graph.value_info if vi.name not in names]
        del model.graph.value_info[:]
        model.graph.value_info.extend([*kept, *new])
        model = onnx.shape_inference.infer_shapes(model)
    if added:
        onnx.save(model, str(path))
    return added


def looks_like_transformer(model: onnx.ModelProto) -> bool:
    ops = op_counts(model)
    return "Softmax" in ops and "MatMul" in ops and ("LayerNormalization" in ops or "ReduceMean" in ops)


def _constant_ints(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Small int64 constants by tensor name (Constant nodes and initializers)."""
    from onnx import numpy_helper

    values: dict[str, list[int]] = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and len(init.dims) <= 1:
            values[init.name] = [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if t.data_type == onnx.TensorProto.INT64 and len(t.dims) <= 1:
                values[node.output[0]] = [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
    return values


def infer_attention_shape(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(num_heads, hidden_size) of a BERT-like export, read from its graph; None when not found.

    hidden_size is the width of the first LayerNormalization's scale; the head size is the last constant of the
    4-D shape that attention reshapes Q/K/V to (`Concat(batch, seq, -1 | heads, head_size)`).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    hidden = None
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) > 1 and node.input[1] in inits:
            hidden = int(numpy_helper.to_array(inits[node.input[1]]).size)
            break
    if not hidden:
        return None
    consts = _constant_ints(model)
    votes: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type == "Concat" and len(node.input) == 4:
            last = consts.get(node.input[3])
            if last and len(last) == 1 and 1 < last[0] < hidden and hidden % last[0] == 0:
                votes[hidden // last[0]] += 1
    if not votes:
        return None
    return votes.most_common(1)[0][0], hidden


def _fuse_transformer(model: onnx.ModelProto, fusion: Fusion) -> tuple[onnx.ModelProto, dict[str, int]]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    if fusion == "no_attention":
        options.enable_attention = False
        options.enable_embed_layer_norm = False  # its fused mask output only feeds Attention
    # The optimizer's own detection of heads/hidden size fails on recent transformers exports (they reshape to
    # (batch, seq, -1, head_size)), so read them from the graph.
    num_heads, hidden_size = infer_attention_shape(model) or (0, 0)
    # opt_level=0: Python fusions only; ONNX Runtime's own optimizer runs later in quant_pre_process.
    optimized = optimize_model(
        model,
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    return optimized.model, stats


def preprocess(
    input_path: str | Path,
    output_path: str | Path,
    *,
    fusion: Fusion = "auto",
    shape_inference: bool = True,
    ort_basic_optimization: bool = True,
) -> dict[str, Any]:
    """Fuses transformer subgraphs and runs ONNX Runtime's quantization pre-processing.

    Steps: (1) ONNX Runtime transformer fusions (`onnxruntime.transformers.optimizer`, Python fusions only);
    (2) `onnxruntime.quantization.quant_pre_process` with `skip_symbolic_shape=True`: ONNX Runtime basic graph
    optimization (constant folding, Conv+BatchNorm folding, redundant-node removal) run offline and saved, then
    ONNX shape inference. If step (2) fails the fused model is written without it and the reason is reported.

    Args:
        input_path: float ONNX model.
        output_path: where the pre-processed model is written (single file, no external data).
        fusion: which transformer fusions to apply, see `Fusion`.
        shape_inference: run ONNX shape inference (needed for quantizers to know tensor types).
        ort_basic_optimization: run ONNX Runtime basic graph optimization offline.

    Returns:
        Decisions: `fusion` (requested and applied), `fused_ops` (counts of fused op types), `ops_before`,
        `ops_after`, `pre_process` ("ok", "skipped" or the failure reason).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    model = onnx.load(str(input_path))
    decisions: dict[str, Any] = {"fusion_requested": fusion, "ops_before": op_counts(model)}

    applied: Fusion = fusion
    if fusion == "auto":
        applied = "full" if looks_like_transformer(model) else "none"
    fused_stats: dict[str, int] = {}
    if applied != "none":
        try:
            model, fused_stats = _fuse_transformer(model, applied)
        except Exception as exc:  # fusion is an optimization: never fail the pass for it
            logger.warning("transformer fusion failed, continuing unfused: %s", exc)
            decisions["fusion_error"] = f"{type(exc).__name__}: {exc}"
            applied = "none"
    decisions["fusion"] = applied
    decisions["fused_ops"] = fused_stats

    with tempfile.TemporaryDirectory(prefix="deepopt-prequant-") as tmp:
        tmp_dir = Path(tmp)
        fused_path = tmp_dir / "fused.onnx"
        onnx.save(model, str(fused_path))
        status = "skipped"
        if shape_inference or ort_basic_optimization:
            from onnxruntime.quantization import quant_pre_process

            pre_path = tmp_dir / "pre.onnx"
            try:
                quant_pre_process(
                    str(fused_path),
                    str(pre_path),
                    skip_optimization=not ort_basic_optimization,
                    skip_onnx_shape=not shape_inference,
                    skip_symbolic_shape=True,
                )
                onnx.checker.check_model(str(pre_path))
                shutil.copyfile(pre_path, output_path)
                status = "ok"
            except Exception as exc:
                status = f"failed ({type(exc).__name__}: {exc}); fused model used without it"
                logger.warning("quant_pre_process failed: %s", exc)
        if status != "ok":
            shutil.copyfile(fused_path, output_path)
        # quant_pre_process may leave external-data files next to its output when it fails half-way.
        for leftover in output_path.parent.glob(output_path.name + "*.data"):
            leftover.unlink(missing_ok=True)
    typed = _type_contrib_outputs(output_path)
    if typed:
        decisions["typed_contrib_outputs"] = typed
    decisions["pre_process"] = status
    decisions["ops_after"] = op_counts(onnx.load(str(output_path), load_external_data=False))
    return decisions
