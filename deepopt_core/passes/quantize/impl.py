"""The `quantize` pass: every mode on ONNX, and `dynamic`, `weight_only`, `fp16` and `bf16` on PyTorch.

ONNX: the model is written into the pass's scratch folder and handed to its mode's function, which pre-processes
it with ONNX Runtime's tooling, quantizes it, and verifies that ONNX Runtime's CPU provider runs the result:

* ``dynamic``: :func:`.ort_dynamic.quantize_dynamic` (int8/uint8 weights, activations quantized at run time);
* ``static``: :func:`.ort_static.quantize_static`, calibrated on the job's calibration dataset;
* ``weight_only``: :func:`.ort_weight_only.quantize_weight_only` (``MatMulNBits``);
* ``fp16`` / ``bf16``: :func:`.ort_float.convert_float`.

With ``accuracy_guard``, the eval dataset's rows (and labels, for the accuracy metric) feed the guard, which
returns the most sensitive nodes to float. What each function decided (nodes quantized, nodes left in float and
why, the guard's measurements, ops that need a GPU provider) goes into ``ctx.decisions``.

PyTorch: ``dynamic`` is ``torch.ao``'s dynamic quantization of ``nn.Linear`` for eager modules (Hugging Face),
TorchScript graph-mode ``quantize_dynamic_jit`` for ScriptModules, and for ``torch.export`` graph modules each
``aten.linear`` on a constant weight is replaced by a dynamically quantized Linear module. ``weight_only``,
``fp16`` and ``bf16`` are in :mod:`.torch_modes`. ``static`` runs on ONNX only (the planner refuses it on PyTorch).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deepopt_core.errors import DeepOptError, PassFailed
from deepopt_core.passes.context import PassContext
from deepopt_core.passes.quantize.ort_common import gemm_to_matmul

__all__ = ["apply_onnx", "apply_torch", "gemm_to_matmul"]

log = logging.getLogger("deepopt.passes.quantize")
_QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "MatMulIntegerToFloat",
                  "DynamicQuantizeLSTM", "QAttention", "QEmbedLayerNormalization", "GatherBlockQuantized",
                  "MatMulNBits", "QLinearMatMul", "QLinearConv", "QGemm", "QuantizeLinear", "DequantizeLinear")
CALIBRATION_BATCH = 32
_HF_PREFIX = "hf_model."  # the Hugging Face wrapper's attribute (formats.torch_common.HF_PREFIX, without torch)
GUARD_BATCH = 64


# ---------------------------------------------------------------------------------------------------------------
# Feeds from the job's datasets
# ---------------------------------------------------------------------------------------------------------------


def _tokenizer(ctx: PassContext) -> Any:
    tokenizer = getattr(ctx, "tokenizer", None)
    if tokenizer is None and ctx.hf_folder is not None:
        from deepopt_core.formats.hf import load_tokenizer

        tokenizer = load_tokenizer(ctx.hf_folder)
    return tokenizer


def dataset_feeds(ctx: PassContext, dataset: Any, rows: int, batch: int) -> list[dict[str, np.ndarray]]:
    """The first `rows` rows of `dataset` as model inputs, in batches (of the model's fixed batch size if any)."""
    from deepopt_core.evaluate.benchmark import static_batch
    from deepopt_core.evaluate.inputs import batches, dataset_feed, rows_of, take

    tokenizer = _tokenizer(ctx) if dataset.texts is not None else None
    feed = dataset_feed(ctx.info, dataset, tokenizer=tokenizer, max_rows=rows)
    fixed = static_batch(ctx.info)
    if fixed:  # every batch must have the model's batch size: wrap around to fill the last one
        total = max(fixed, -(-rows_of(feed) // fixed) * fixed)
        return batches(take(feed, 0, total), fixed)
    return batches(feed, batch)


def _guard_kwargs(spec: Any, ctx: PassContext) -> dict[str, Any]:
    """Arguments of the mode functions' accuracy guard, from `spec.accuracy_guard` and the eval dataset."""
    from deepopt_core.evaluate.inputs import rows_of
    from deepopt_core.passes.quantize.ort_common import accuracy_metric

    guard = getattr(spec, "accuracy_guard", None)
    if guard is None:
        return {}
    if ctx.eval is None:
        raise PassFailed("quantize: the accuracy guard measures on the eval dataset; the job has none")
    feeds = dataset_feeds(ctx, ctx.eval, guard.num_samples, GUARD_BATCH)
    metric = None  # the mode functions' default: cosine fidelity to the unquantized model
    if guard.metric == "accuracy":
        if ctx.eval.labels is None:
            raise PassFailed("quantize: the accuracy guard's metric 'accuracy' needs an eval dataset with labels")
        rows = sum(rows_of(f) for f in feeds)
        labels = ctx.eval.labels[np.arange(rows) % len(ctx.eval.labels)]
        metric = accuracy_metric(labels)
    return {"eval_feeds": feeds, "metric": metric, "max_drop": guard.max_drop, "max_fallback": guard.max_fallback}


def _calibration_feeds(spec: Any, ctx: PassContext, required: bool) -> list[dict[str, np.ndarray]] | None:
    if ctx.calibration is None:
        if required:
            raise PassFailed(f"quantize: mode {spec.mode!r} needs a calibration dataset (calibration_dataset_id)")
        return None
    return dataset_feeds(ctx, ctx.calibration, spec.num_samples, CALIBRATION_BATCH)


def _exclude_names(model: onnx.ModelProto, exclude: list[str]) -> tuple[list[str], dict[str, str]]:
    """`exclude` with layer names (``fc1``) and weight names (``fc1.weight``) replaced by their node names;
    node names, op types and glob patterns pass through. Returns (entries, alias -> node name)."""
    from deepopt_core.formats.onnx_inspect import weight_refs
    from deepopt_core.sparsity import onnx_layer_name

    names = {n.name for n in model.graph.node} | {n.op_type for n in model.graph.node}
    by_alias: dict[str, str] = {}
    for ref in weight_refs(model):
        for alias in (onnx_layer_name(ref), ref.name):
            by_alias.setdefault(alias, ref.node)
            by_alias.setdefault(alias.removeprefix(_HF_PREFIX), ref.node)
        # torch.onnx.export names a layer's node after its module path (`/hf_model/bert/pooler/dense/Gemm`): the
        # PyTorch layer name (`bert.pooler.dense`) selects it too.
        parts = ref.node.strip("/").split("/")
        if ref.node.startswith("/") and len(parts) > 1:
            path = ".".join(parts[:-1])
            by_alias.setdefault(path, ref.node)
            by_alias.setdefault(path.removeprefix(_HF_PREFIX), ref.node)
    entries, aliases = [], {}
    for entry in exclude:
        if entry not in names and entry in by_alias:
            aliases[entry] = by_alias[entry]
            entries.append(by_alias[entry])
        else:
            entries.append(entry)
    return entries, aliases


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------


def _run_mode(spec: Any, src: Path, out: Path, exclude: list[str], ctx: PassContext) -> dict[str, Any]:
    from deepopt_core.passes.quantize import ort_dynamic, ort_float, ort_static, ort_weight_only

    mode = spec.mode
    if mode in ("fp16", "bf16"):
        return ort_float.convert_float(src, out, dtype=mode, keep_io_types=spec.keep_io_types, exclude=exclude,
                                       eval_feeds=[ctx.sample] if ctx.sample else None)
    common: dict[str, Any] = {"exclude": exclude, "fusion": spec.fusion, "preprocess_model": spec.preprocess,
                              **_guard_kwargs(spec, ctx)}
    if mode == "dynamic":
        return ort_dynamic.quantize_dynamic(src, out, weight_dtype=spec.weight_dtype, per_channel=spec.per_channel,
                                            reduce_range=spec.reduce_range, **common)
    if mode == "static":
        calibration = _calibration_feeds(spec, ctx, required=True)
        return ort_static.quantize_static(
            src, out, calibration or [], calibration_method=spec.calibration, percentile=spec.percentile,
            quant_format=spec.quant_format, per_channel=spec.per_channel, symmetric=spec.symmetric,
            activation_dtype=spec.activation_dtype, num_samples=spec.num_samples, **common,
        )  # fmt: skip
    if mode == "weight_only":
        return ort_weight_only.quantize_weight_only(
            src, out, bits=spec.bits, block_size=spec.block_size, symmetric=spec.symmetric, algorithm=spec.algorithm,
            accuracy_level=spec.accuracy_level, calibration=_calibration_feeds(spec, ctx, spec.algorithm == "gptq"),
            num_samples=spec.num_samples, quantize_embeddings=spec.quantize_embeddings, **common,
        )  # fmt: skip
    raise PassFailed(f"quantize: unknown mode {mode!r}")


def apply_onnx(spec: Any, model: onnx.ModelProto | str | Path, ctx: PassContext) -> onnx.ModelProto:
    """Quantize (or convert) an ONNX model with the function of `spec.mode`; see the module docstring."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    mode = getattr(spec, "mode", "dynamic")
    exclude, aliases = _exclude_names(model, list(spec.exclude))
    ctx.progress(0.05)
    with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix="quantize-") as tmp:
        src, out = Path(tmp) / "input.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, str(src))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decisions = _run_mode(spec, src, out, exclude, ctx)
        except DeepOptError:
            raise
        except Exception as exc:  # ONNX Runtime's tooling raises many kinds
            message = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
            raise PassFailed(f"quantize ({mode}): ONNX Runtime could not process the model: {message}") from None
        quantized = onnx.load(str(out))
    ctx.progress(0.95)
    _record(spec, ctx, decisions, quantized, aliases)
    ctx.progress(1.0)
    return quantized


def _record(spec: Any, ctx: PassContext, decisions: dict[str, Any], quantized: onnx.ModelProto,
            aliases: dict[str, str]) -> None:
    """Put the mode function's decisions into ctx.decisions (with summary keys), and warn about what matters."""
    mode = spec.mode
    verification = decisions.get("verification") or {}
    if verification.get("runs_on_cpu") is False:
        ops = verification.get("ops_without_cpu_kernel") or verification.get("ops_rejecting_type") or []
        needs = ", ".join(f"{o['op_type']} ({o['node']})" for o in ops) or verification.get("error", "")
        raise PassFailed(f"quantize ({mode}): the result does not run on ONNX Runtime's CPU provider: {needs}"
                         + ("; these ops need a GPU (or other) execution provider" if ops else ""))
    ops = Counter(n.op_type for n in quantized.graph.node)
    kept = decisions.get("kept_float") or []
    excluded = sorted({k["node"] for k in kept if k.get("reason") == "excluded by the user"})
    summary: dict[str, Any] = {
        "mode": mode, "engine": "onnxruntime",
        "quantized_nodes": len(decisions.get("quantized") or []),
        "quantized_ops": {op: ops[op] for op in _QUANTIZED_OPS if ops[op]},
        "excluded": excluded or decisions.get("kept_float32_nodes", []),
        "exclude_aliases": aliases,
    }  # fmt: skip
    if mode == "dynamic":
        summary.update(weight_dtype=spec.weight_dtype, per_channel=(decisions.get("settings") or {}).get("per_channel"))
    ctx.decisions.update({**summary, **{k: v for k, v in decisions.items() if k != "mode"}})

    unmatched = decisions.get("exclude_unmatched") or []
    if unmatched:
        ctx.warn(f"quantize: exclude entries {unmatched} match no node name, op type or layer")
    if mode not in ("fp16", "bf16") and not decisions.get("quantized"):
        ctx.warn(f"quantize ({mode}): no node was quantized (no MatMul/Gemm/Conv with a constant weight outside "
                 "`exclude`)")
    guard = decisions.get("guard")
    if guard:
        fallback = guard.get("fallback_nodes") or []
        if fallback:
            ctx.warn(f"quantize ({mode}): the accuracy guard left {len(fallback)} node(s) in float to keep the drop "
                     f"at {guard['drop']:.3g} (max_drop {guard['max_drop']}): {', '.join(fallback)}")
        if guard.get("within_max_drop") is False:
            ctx.warn(f"quantize ({mode}): the accuracy guard could not bring the drop within max_drop "
                     f"({guard['drop']:.3g} > {guard['max_drop']})")
    if decisions.get("no_cpu_kernel"):
        ctx.warn(f"quantize ({mode}): ONNX Runtime's CPU provider has no {mode} kernel for "
                 f"{', '.join(decisions['no_cpu_kernel'])}: those ops compute in float32 behind casts (a GPU "
                 "provider runs them in 16 bits)")


# ---------------------------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------------------------


def _per_channel(spec: Any, model: Any) -> bool:
    """`spec.per_channel`, or by default per channel on Hugging Face models (transformers) and per tensor on the
    others, as measured (see `DynamicQuantizeConfig.per_channel`)."""
    if spec.per_channel is not None:
        return bool(spec.per_channel)
    return bool(getattr(type(model), "is_hf_wrapper", False))


def _qconfig(per_channel: bool) -> Any:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    return per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig


def _quantize_graph_module(module: Any, qconfig: Any, exclude: set[str]) -> list[str]:
    """Replace ``aten.linear(x, W, b)`` on constant W (and b) by a dynamically quantized Linear module."""
    import torch
    from torch import nn
    from torch.ao.nn.quantized import dynamic as nnqd

    from deepopt_core.passes.quantize.torch_modes import replace_graph_linears

    def build(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        float_linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            float_linear.weight.copy_(weight)
            if bias is not None:
                float_linear.bias.copy_(bias)
        float_linear.qconfig = qconfig  # type: ignore[assignment]
        return nnqd.Linear.from_float(float_linear)

    return replace_graph_linears(module, exclude, build, "dq_")


def apply_torch(spec: Any, model: Any, ctx: PassContext) -> Any:
    """Quantize a torch module: `dynamic` here, `weight_only` / `fp16` / `bf16` in :mod:`.torch_modes`."""
    mode = getattr(spec, "mode", "dynamic")
    problem = spec.representation_problem("torch") if hasattr(spec, "representation_problem") else None
    if problem:
        raise PassFailed(f"quantize: {problem}")
    if mode in ("weight_only", "fp16", "bf16"):
        from deepopt_core.passes.quantize import torch_modes

        if mode == "weight_only":
            return torch_modes.weight_only(spec, model, ctx)
        return torch_modes.half_precision(spec, model, ctx)
    if mode != "dynamic":
        raise PassFailed(f"quantize: mode {mode!r} runs on ONNX models only; ask for 'onnx' output")
    return _dynamic_torch(spec, model, ctx)


def _dynamic_torch(spec: Any, model: Any, ctx: PassContext) -> Any:
    """Dynamically quantize the Linear layers of a torch module (see the module docstring for the three kinds)."""
    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic, quantize_dynamic_jit

    from deepopt_core.formats.torch_common import is_graph, is_script, prunable_params, quantized_weights

    exclude = set(spec.exclude)
    per_channel = _per_channel(spec, model)
    qconfig = _qconfig(per_channel)
    linear_names = [name for name, w in prunable_params(model).items() if w.dim() == 2]
    rewritten: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if is_script(model):
                mapping: dict[str, Any] = {"": qconfig}
                mapping.update({name: None for name in exclude})
                quantized = quantize_dynamic_jit(model, mapping)
                engine = "torch.ao quantize_dynamic_jit (TorchScript graph mode)"
            elif is_graph(model):
                rewritten = _quantize_graph_module(model, qconfig, exclude)
                quantized = model
                engine = "torch.ao dynamic Linear (torch.export graph rewrite)"
            else:
                inner = getattr(model, "hf_model", model)
                spec_map = {name: qconfig for name, m in inner.named_modules()
                            if isinstance(m, nn.Linear) and name not in exclude}
                quantized_inner = quantize_dynamic(inner, spec_map, dtype=torch.qint8, inplace=False)
                if inner is not model:
                    model.hf_model = quantized_inner
                    quantized = model
                else:
                    quantized = quantized_inner
                engine = "torch.ao quantize_dynamic (eager nn.Linear)"
        except (RuntimeError, AttributeError, TypeError) as exc:
            raise PassFailed(f"quantize: PyTorch dynamic quantization failed: {str(exc)[:500]}") from None
    layers = rewritten if is_graph(quantized) else sorted(quantized_weights(quantized))
    if not layers:
        ctx.warn("quantize: no Linear layer was quantized")
    ctx.decisions.update({
        "mode": "dynamic", "engine": engine, "weight_dtype": "int8", "per_channel": per_channel,
        "quantized_layers": layers, "linear_layers": linear_names, "excluded": sorted(exclude),
        "kept_float": [{"layer": name, "reason": "excluded by the user"} for name in sorted(exclude)
                       if name in linear_names],
    })  # fmt: skip
    ctx.progress(1.0)
    return quantized
