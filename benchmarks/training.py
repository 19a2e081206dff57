"""Training benchmark: the `distill` and `finetune` passes on real data, side by side, in one run.

``make bench-train`` (``python -m benchmarks.training``) writes ``benchmarks/results/training.json`` and
``training.md``. Everything runs through the passes' own ``apply_torch`` (the code a job runs), on the CPU:

1. **Digits CNN distillation**: a 151,306-parameter CNN teacher (plain loop) and a width-0.5 student
   (38,282 parameters, 3.95x fewer) over 5 seeds: from scratch (plain loop, and the pass's loop with CE only)
   against distillation with and without a teacher-initialised student, hidden-state loss and augmentation.
2. **Breast-cancer MLP distillation**: the same comparison for a 10x smaller MLP student on tabular data.
3. **MiniLM 6 -> 3 layers**: all-MiniLM-L6-v2 distilled into every second layer on English sentences;
   fidelity (cosine of mean-pooled embeddings on held-out sentences) and ONNX Runtime latency of both.
4. **Fine-tuning MiniLM** on a 4-topic sentence classification (:mod:`benchmarks.training_data`): every
   method (LoRA, QLoRA-style int8/int4 base, series and parallel adapters, prefix tuning, full), each in its own
   process so that peak memory (resident-set growth while training) is measured alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

from benchmarks import training_data as td  # noqa: E402
from benchmarks.common import (  # noqa: E402
    embeddings,
    export_bert,
    fixed_batch,
    load_sentences,
    make_session,
    sentence_feeds,
)  # fmt: skip
from deepopt_core.evaluate.metrics import cosine_fidelity  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _context(work: Path, model_path: Path, train: Path, eval_path: Path | None) -> tuple[Any, Any]:
    """(model as the pipeline loads it, PassContext) for a direct ``apply_torch`` call."""
    from deepopt_core.datasets import load_dataset
    from deepopt_core.formats import inspect_model
    from deepopt_core.formats.hf import load_tokenizer
    from deepopt_core.passes.context import PassContext, load_handle

    info = inspect_model(model_path)
    work.mkdir(parents=True, exist_ok=True)
    handle = load_handle(model_path, info, work)
    tokenizer = load_tokenizer(handle.hf_folder) if handle.hf_folder else None
    ctx = PassContext(workdir=work, info=info, sample={}, train=load_dataset(train),
                      eval=load_dataset(eval_path) if eval_path else None, tokenizer=tokenizer, source=model_path,
                      hf_folder=handle.hf_folder, outdir=work, output_name="bench")
    return handle.model, ctx


def _run_distill(spec: dict[str, Any], work: Path, teacher: Path, train: Path, x: np.ndarray,
                 report_every: int = 0) -> tuple[Any, Any]:
    from deepopt_core.passes.distill.config import DistillConfig
    from deepopt_core.passes.distill.impl import apply_torch

    model, ctx = _context(work, teacher, train, None)
    if report_every:
        logged = {"step": 0}

        def on_metrics(_fraction: float, metrics: dict[str, Any]) -> None:
            if metrics["step"] >= logged["step"] + report_every or metrics["step"] == metrics["steps"]:
                logged["step"] = metrics["step"]
                log(f"distill step {metrics['step']}/{metrics['steps']} loss {metrics['loss']:.4f}")

        ctx.on_metrics = on_metrics
    student = apply_torch(DistillConfig.model_validate({"type": "distill", **spec}), model, ctx)
    return student, ctx.decisions


def _acc(module: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(x))
    out = out[0] if isinstance(out, list | tuple) else out
    return float((out.argmax(-1).numpy() == y).mean())


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 4), "std": round(statistics.pstdev(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def bench_small_distill(work: Path, name: str, data: tuple[np.ndarray, ...], make: Any, widths: tuple[int, int],
                        epochs: int, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Teacher (plain loop), students from scratch and distilled, over SEEDS; test accuracies."""
    import torch

    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = data
    teacher = td.train_plain(make(widths[0]), x_tr, y_tr, epochs=epochs, seed=0)
    teacher_acc = td.accuracy(teacher, x_te, y_te)
    teacher_path = td.save_pt2(teacher, work / f"{name}-teacher.pt2", x_tr[:2])
    train = work / f"{name}-train.npz"
    np.savez(train, input=x_tr, labels=y_tr)
    t_params = sum(p.numel() for p in teacher.parameters())
    s_params = sum(p.numel() for p in make(widths[1]).parameters())
    log(f"{name}: teacher {teacher_acc:.4f} ({t_params} params), student {s_params} params")
    rows: dict[str, list[float]] = {"scratch, plain loop": []}
    for seed in SEEDS:
        rows["scratch, plain loop"].append(td.accuracy(td.train_plain(make(widths[1]), x_tr, y_tr, epochs=epochs,
                                                                      seed=seed), x_te, y_te))
        for label, extra in variants.items():
            spec = {"epochs": epochs, "batch_size": 64, "seed": seed, "validation_split": 0.0, **extra}
            student, decisions = _run_distill(spec, work / f"{name}-{seed}", teacher_path, train, x_tr)
            rows.setdefault(label, []).append(_acc(student, x_te, y_te))
        log(f"{name} seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()))
    scratch = rows["scratch, plain loop"]
    table = []
    for label, values in rows.items():
        gains = [v - s for v, s in zip(values, scratch, strict=True)]
        table.append({"variant": label, "accuracy": _stats(values), "per_seed": values,
                      "gain_over_scratch": _stats(gains),
                      "gain_positive_seeds": sum(g > 0 for g in gains), "seeds": len(values)})
    return {"teacher_accuracy": teacher_acc, "teacher_parameters": t_params, "student_parameters": s_params,
            "compression": round(t_params / s_params, 3), "epochs": epochs, "rows": table}


def interleaved_p50(sessions: dict[str, Any], feed: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    """Median latency (ms) of each session on `feed`, one run of each in turn (load from other processes hits
    all alike)."""
    for session in sessions.values():
        for _ in range(2):
            session.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[key].append(1000 * (time.perf_counter() - started))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_minilm_distill(work: Path, epochs: int, extra: int = 0, hidden_loss: float = 1.0,
                         lr: float = 5e-4, steps: int | None = None) -> dict[str, Any]:
    """all-MiniLM-L6-v2 -> every second layer; fidelity on held-out sentences and ONNX Runtime latency.

    Transfer set: 1,200 general sentences and 600 topic sentences, plus `extra` sentences from docstrings of other
    installed packages (:func:`benchmarks.common_pruning.train_sentences`); none of them is a held-out sentence.
    """
    import torch

    from benchmarks.common_pruning import train_sentences
    from deepopt_core.passes.distill.students import derive

    torch.set_num_threads(2)
    zip_path = td.minilm_zip(work / "minilm.zip")
    sentences = load_sentences(1600, seed=1)
    topic, _ = td.topic_sentences()
    held = sentences[1200:]
    held_keys = {s.lower() for s in held}
    # The topic sentences come from the same docstrings as the general ones: drop those that are held out.
    general = [s for s in sentences[:1200] + topic[:600] if s.lower() not in held_keys]
    train_texts = general + (train_sentences(extra, exclude=held + general) if extra else [])
    assert not held_keys & {s.lower() for s in train_texts}
    train = td.write_jsonl(work / "minilm-transfer.jsonl", train_texts)
    spec = {"student": {"keep_every": 2}, "hidden_loss": hidden_loss, "epochs": epochs, "batch_size": 32,
            "lr": lr, "warmup_ratio": 0.05, "max_length": 64, "validation_split": 0.05,
            **({"max_steps": steps} if steps else {})}
    log(f"minilm: {len(train_texts)} transfer sentences ({len(general)} general/topic + "
        f"{len(train_texts) - len(general)} "
        f"package docstrings), {len(held)} held out; {spec}")
    started = time.monotonic()
    student, decisions = _run_distill(spec, work / "minilm", zip_path, train, np.zeros(1), report_every=25)
    seconds = time.monotonic() - started
    model, _ctx = _context(work / "minilm-base", zip_path, train, None)
    teacher_core = model.hf_model
    dropped, _ = derive(teacher_core, 2, None, "teacher")
    paths = {}
    for label, core in (("teacher", teacher_core), ("student, layers dropped, no training", dropped),
                        ("student, distilled", student.hf_model)):
        core.set_attn_implementation("eager")
        paths[label] = export_bert(core.eval(), work / f"minilm-{label.split(',')[-1].strip().replace(' ', '-')}.onnx")
    from benchmarks.common import load_tokenizer

    tokenizer = load_tokenizer()
    feeds = sentence_feeds(tokenizer, held, batch_size=32)
    sessions = {label: make_session(p, threads=2) for label, p in paths.items()}
    reference = embeddings(sessions["teacher"], feeds)
    latency = {f"b{b}x{q}": interleaved_p50(sessions, fixed_batch(tokenizer, held, b, q), rounds)
               for b, q, rounds in ((1, 128, 40), (8, 128, 15), (32, 32, 15))}
    rows = []
    for label, session in sessions.items():
        fidelity = cosine_fidelity(reference, embeddings(session, feeds))
        rows.append({"model": label, "layers": 6 if label == "teacher" else 3, "fidelity_cosine": round(fidelity, 4),
                     "p50_ms": {k: round(v[label], 3) for k, v in latency.items()},
                     "size_mb": round(paths[label].stat().st_size / 2**20, 2)})
    base = rows[0]["p50_ms"]
    for row in rows:
        row["speedup"] = {k: round(base[k] / v, 3) for k, v in row["p50_ms"].items()}
    return {"rows": rows, "train_sentences": len(train_texts), "extra_train_sentences": len(train_texts) - len(general),
            "held_out_sentences": len(held), "held_out_in_train": 0, "settings": spec,
            "distill_seconds": round(seconds, 1), "decisions": {k: decisions[k] for k in (
                "kept_layers", "teacher_parameters", "student_parameters", "steps", "final_loss", "hidden_pairs")}}


FINETUNE_METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full", "lr": 5e-5},
    "lora r=8 (query, value)": {"method": "lora", "r": 8, "alpha": 16, "lr": 5e-3},
    "lora r=8, int8 base": {"method": "lora", "r": 8, "alpha": 16, "lr": 5e-3, "base_quantization": "int8"},
    "lora r=8, int4 base": {"method": "lora", "r": 8, "alpha": 16, "lr": 5e-3, "base_quantization": "int4"},
    "adapter_series (64)": {"method": "adapter_series", "bottleneck_size": 64, "lr": 1e-3},
    "adapter_parallel (64)": {"method": "adapter_parallel", "bottleneck_size": 64, "lr": 1e-3},
    "prefix (16 tokens)": {"method": "prefix", "num_virtual_tokens": 16, "lr": 1e-2},
}


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def finetune_child(config: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning run (in its own process): the pass on MiniLM, peak resident memory while it trains."""
    import torch
    from pydantic import TypeAdapter

    from deepopt_core.passes.finetune.impl import apply_torch
    from deepopt_core.specs import PassSpec  # noqa: F401  (registers the passes)

    torch.set_num_threads(2)
    work = Path(config["work"])
    model, ctx = _context(work, Path(config["model"]), Path(config["train"]), Path(config["eval"]))
    spec = TypeAdapter(PassSpec).validate_python({"type": "finetune", **config["spec"]})
    baseline = _vm("VmRSS")
    apply_torch(spec, model, ctx)
    decisions = dict(ctx.decisions)
    decisions["peak_rss_growth_bytes"] = _vm("VmHWM") - baseline
    decisions.pop("loss_curve", None)
    return decisions


def interleaved_steps(model_path: Path, train: Path, methods: dict[str, dict[str, Any]], rounds: int = 10
                      ) -> dict[str, float]:
    """Median time (ms) of one optimizer step (batch 16, forward, backward, AdamW) of each method, the methods
    timed in turn on the same batch so that load from other processes hits all alike."""
    import copy

    import torch
    from pydantic import TypeAdapter

    from deepopt_core.passes.finetune.impl import _forward, attach_method, task_loss
    from deepopt_core.passes.finetune.modules import set_mode, with_head
    from deepopt_core.passes.finetune.training import load_train_data
    from deepopt_core.specs import PassSpec

    torch.set_num_threads(2)
    model, ctx = _context(model_path.parent / "steps", model_path, train, None)
    base, _ = with_head(model.hf_model, 4, False, "auto")
    data = load_train_data(ctx.train, ctx.info, ctx.tokenizer, max_length=48)
    batch = data.batch(np.arange(16), torch.device("cpu"))
    steps: dict[str, Any] = {}
    for label, method in methods.items():
        spec = TypeAdapter(PassSpec).validate_python({"type": "finetune", **method})
        core = copy.deepcopy(base)
        attach_method(spec, core, True)
        set_mode(core, True)
        params = [p for p in core.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        forward = _forward(core, True, data.names)

        def step(forward: Any = forward, optimizer: Any = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            task_loss(forward(batch), batch["labels"], False).backward()
            optimizer.step()

        steps[label] = step
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():
        step()
        step()
    for _ in range(rounds):
        for label, step in steps.items():
            started = time.perf_counter()
            step()
            times[label].append(1000 * (time.perf_counter() - started))
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def bench_finetune(work: Path, epochs: int, methods: list[str] | None = None) -> dict[str, Any]:
    """Every method of FINETUNE_METHODS (or those named in `methods`), each in its own process; then one step of
    every method timed interleaved."""
    texts, labels = td.topic_sentences()
    cut = int(0.67 * len(texts))
    train = td.write_jsonl(work / "topics-train.jsonl", texts[:cut], labels[:cut])
    test = td.write_jsonl(work / "topics-test.jsonl", texts[cut:], labels[cut:])
    model = work / "minilm.zip"
    if not model.exists():
        td.minilm_zip(model)
    rows = []
    for label, method in FINETUNE_METHODS.items():
        if methods and label not in methods:
            continue
        spec = {"epochs": epochs, "batch_size": 16, "max_length": 48, "validation_split": 0.1, **method}
        config = {"work": str(work / f"ft-{len(rows)}"), "model": str(model), "train": str(train), "eval": str(test),
                  "spec": spec}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "benchmarks.training", "--child", json.dumps(config)],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode:
            log(f"finetune {label} failed:\n{done.stderr[-3000:]}")
            continue
        decisions = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"method": label, "accuracy_before": decisions["before"]["accuracy"],
                     "accuracy": decisions["after"]["accuracy"],
                     "trainable_parameters": decisions["trainable_parameters"],
                     "trainable_fraction": decisions["trainable_fraction"],
                     "step_time_ms": decisions["step_time_ms"], "steps": decisions["steps"],
                     "peak_rss_growth_mb": round(decisions["peak_rss_growth_bytes"] / 2**20, 1),
                     "train_seconds": decisions["train_seconds"], "wall_seconds": round(time.monotonic() - started, 1),
                     "merge_fidelity": decisions.get("merge_fidelity"),
                     "adapter_reload_max_abs_diff": decisions.get("adapter_reload_max_abs_diff")})
        log(f"finetune {label}: {rows[-1]}")
    interleaved = interleaved_steps(model, train, FINETUNE_METHODS)
    for row in rows:
        row["step_ms_interleaved"] = interleaved.get(row["method"])
    log(f"interleaved step times: {interleaved}")
    return {"train_rows": cut, "test_rows": len(texts) - cut, "classes": 4, "epochs": epochs, "rows": rows}


DIGITS_VARIANTS: dict[str, dict[str, Any]] = {
    "scratch, same loop as KD (CE only)": {"student": {"width_ratio": 0.47, "init": "random"}, "alpha": 1.0},
    "KD T=4, random init": {"student": {"width_ratio": 0.47, "init": "random"}, "temperature": 4.0},
    # Teacher-initialised without soft targets (structured pruning + fine-tuning): what the initialisation alone gives.
    "teacher init, CE only (no KD)": {"student": {"width_ratio": 0.47}, "alpha": 1.0},
    "KD T=4, teacher init": {"student": {"width_ratio": 0.47}, "temperature": 4.0},
    "KD T=4, random init + hidden loss": {"student": {"width_ratio": 0.47, "init": "random"}, "temperature": 4.0,
                                          "hidden_loss": 1.0},
    "KD T=4, random init + shift/noise augmentation": {"student": {"width_ratio": 0.47, "init": "random"},
                                                       "temperature": 4.0, "augment": ["shift", "noise"]},
    "KD T=4, teacher init + hidden + augmentation": {"student": {"width_ratio": 0.47}, "temperature": 4.0,
                                                     "hidden_loss": 1.0, "augment": ["shift", "noise"]},
}
CANCER_VARIANTS: dict[str, dict[str, Any]] = {
    "scratch, same loop as KD (CE only)": {"student": {"width_ratio": 0.25, "init": "random"}, "alpha": 1.0},
    "KD T=4, random init": {"student": {"width_ratio": 0.25, "init": "random"}, "temperature": 4.0},
    "KD T=4, teacher init": {"student": {"width_ratio": 0.25}, "temperature": 4.0},
    "KD T=4, teacher init + noise augmentation": {"student": {"width_ratio": 0.25}, "temperature": 4.0,
                                                  "augment": ["noise"]},
}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, met: bool, target: str) -> None:
        out.append({"target": name, "measured": value, "met": bool(met), "wanted": target})

    digits = result.get("digits")
    if digits:
        best = max(digits["rows"][1:], key=lambda r: r["accuracy"]["mean"])
        add("digits student parameters", f"{digits['student_parameters']} ({digits['compression']}x fewer)",
            digits["student_parameters"] * 4 <= digits["teacher_parameters"], "<= 1/4 of the teacher's")
        add("digits student accuracy (best variant, mean of 5 seeds)",
            f"{best['accuracy']['mean']:.4f} ({best['variant']}) vs teacher {digits['teacher_accuracy']:.4f}",
            best["accuracy"]["mean"] >= digits["teacher_accuracy"] - 0.015, ">= teacher - 0.015")
        gain = best["gain_over_scratch"]
        add("digits best student's gain over scratch (plain loop), 5 seeds",
            f"{100 * gain['mean']:+.2f} ± {100 * gain['std']:.2f} points, up on {best['gain_positive_seeds']}/"
            f"{best['seeds']} seeds", gain["mean"] > 0 and best["gain_positive_seeds"] == best["seeds"],
            "> 0 on every seed")
    minilm = result.get("minilm")
    if minilm:
        distilled = minilm["rows"][-1]
        add("MiniLM 3-layer fidelity (held-out)", distilled["fidelity_cosine"], distilled["fidelity_cosine"] >= 0.9,
            ">= 0.9")
        speed = min(distilled["speedup"]["b1x128"], distilled["speedup"]["b8x128"])
        add("MiniLM 3-layer ONNX Runtime speedup (min of b1, b8 x 128)", speed, speed >= 1.7, ">= 1.7x")
    finetune = {r["method"]: r for r in (result.get("finetune") or {}).get("rows", [])}
    lora, full = finetune.get("lora r=8 (query, value)"), finetune.get("full")
    if lora and full:
        add("LoRA trainable fraction", lora["trainable_fraction"], lora["trainable_fraction"] < 0.02, "< 2%")
        add("LoRA accuracy vs full", f"{lora['accuracy']:.4f} vs {full['accuracy']:.4f}",
            lora["accuracy"] >= full["accuracy"] - 0.02, "within 2 points of full")
        add("LoRA peak memory vs full (MB)", f"{lora['peak_rss_growth_mb']} vs {full['peak_rss_growth_mb']}",
            lora["peak_rss_growth_mb"] < full["peak_rss_growth_mb"], "below full")
        interleaved = bool(lora.get("step_ms_interleaved") and full.get("step_ms_interleaved"))
        key = "step_ms_interleaved" if interleaved else "step_time_ms"
        add(f"LoRA step time vs full (ms, {'interleaved' if interleaved else 'each in its own run'})",
            f"{lora[key]:.0f} vs {full[key]:.0f}", lora[key] < full[key], "below full")
    return out


def _gain(values: list[float], base: list[float]) -> str:
    gains = [v - b for v, b in zip(values, base, strict=True)]
    return (f"{100 * statistics.mean(gains):+.2f} ± {100 * statistics.pstdev(gains):.2f} "
            f"({sum(g > 0 for g in gains)}/{sum(g < 0 for g in gains)})")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def write_reports(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "training.json").write_text(json.dumps(result, indent=2, default=str))
    meta = result["meta"]
    lines = ["# Training benchmark (distill, finetune; CPU)", "",
             f"Generated by `python -m benchmarks.training` on {meta['date']}: {meta['machine']}, torch "
             f"{meta['torch']}, {meta['threads']} threads, under other engineers' load (timings are indicative).", ""]
    if meta.get("commands"):
        lines += ["Runs: " + "; ".join(f"`{c.strip()}`" for c in meta["commands"]) + ".", ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    for key, title in (("digits", "Digits CNN distillation"),
                       ("digits_ablation", "Digits CNN: teacher initialisation with and without soft targets"),
                       ("cancer", "Breast-cancer MLP distillation")):
        block = result.get(key)
        if not block:
            continue
        lines += [f"## {title}", "",
                  f"Teacher {block['teacher_parameters']:,} parameters, test accuracy "
                  f"{_pct(block['teacher_accuracy'])}%; student {block['student_parameters']:,} parameters "
                  f"({block['compression']}x fewer); {block['epochs']} epochs; {len(SEEDS)} seeds.", "",
                  "| student | accuracy % mean ± std | min-max | gain over scratch, plain loop (points; seeds "
                  "up/down) | gain over scratch, same loop (points; seeds up/down) |", "|---|---:|---:|---:|---:|"]
        same = next((r["per_seed"] for r in block["rows"] if r["variant"].startswith("scratch, same loop")), None)
        plain = block["rows"][0]["per_seed"]
        for row in block["rows"]:
            a = row["accuracy"]
            lines.append(f"| {row['variant']} | {_pct(a['mean'])} ± {_pct(a['std'])} | {_pct(a['min'])}-"
                         f"{_pct(a['max'])} | {_gain(row['per_seed'], plain)} | "
                         f"{_gain(row['per_seed'], same) if same else '-'} |")
        lines.append("")
    minilm = result.get("minilm")
    if minilm:
        settings = minilm.get("settings") or {}
        how = (f" ({settings['epochs']} epochs at most, {minilm['decisions']['steps']} steps, lr {settings['lr']}, "
               f"hidden loss {settings['hidden_loss']}, batch {settings['batch_size']}, max length "
               f"{settings['max_length']})" if settings else "")
        lines += ["## all-MiniLM-L6-v2 -> 3 layers (keep_every 2)", "",
                  f"Distilled on {minilm['train_sentences']} sentences"
                  + (f" ({minilm['extra_train_sentences']} of them from other packages' docstrings)"
                     if minilm.get("extra_train_sentences") else "")
                  + f" in {minilm['distill_seconds']} s{how}; fidelity = "
                  f"mean cosine of mean-pooled embeddings against the teacher on {minilm['held_out_sentences']} "
                  "held-out sentences (none of them in the transfer set); ONNX Runtime p50 latency (2 threads).", "",
                  "| model | layers | fidelity | p50 b1x128 ms | p50 b8x128 ms | p50 b32x32 ms | speedup b1 / b8 / "
                  "b32 | MB |", "|---|---:|---:|---:|---:|---:|---|---:|"]
        for row in minilm["rows"]:
            p, s = row["p50_ms"], row["speedup"]
            lines.append(f"| {row['model']} | {row['layers']} | {row['fidelity_cosine']:.4f} | {p['b1x128']} | "
                         f"{p['b8x128']} | {p['b32x32']} | {s['b1x128']} / {s['b8x128']} / {s['b32x32']} | "
                         f"{row['size_mb']} |")
        lines.append("")
    finetune = result.get("finetune")
    if finetune:
        lines += ["## Fine-tuning all-MiniLM-L6-v2: 4-topic sentence classification", "",
                  f"{finetune['train_rows']} training sentences (10% held out for early-stopping checks), "
                  f"{finetune['test_rows']} test sentences, {finetune['epochs']} epochs, batch 16; each method in "
                  "its own process (peak memory = resident-set growth while training).", "",
                  "| method | trainable params | trainable % | test accuracy % (before -> after) | step ms "
                  "(interleaved) | step ms (in its run) | peak MB | merge fidelity |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in finetune["rows"]:
            merge = row.get("merge_fidelity") or {}
            lines.append(f"| {row['method']} | {row['trainable_parameters']:,} | {_pct(row['trainable_fraction'])} "
                         f"| {_pct(row['accuracy_before'])} -> {_pct(row['accuracy'])} | "
                         f"{row.get('step_ms_interleaved') or '-'} | {row['step_time_ms']:.0f} "
                         f"| {row['peak_rss_growth_mb']} | "
                         f"{merge.get('fidelity_cosine', '-') if merge else '-'} |")
        lines.append("")
    lines += ["## Targets", "", "| target | measured | wanted | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['wanted']} | {'yes' if t['met'] else 'NO'} |")
    (out_dir / "training.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    global SEEDS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["digits", "cancer", "minilm", "finetune"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--digits-epochs", type=int, default=30)
    parser.add_argument("--minilm-epochs", type=int, default=4)
    parser.add_argument("--minilm-extra-sentences", type=int, default=2200, help="MiniLM transfer sentences from "
                        "other packages' docstrings, on top of the 1,200 general and 600 topic ones (less any "
                        "held-out one)")
    parser.add_argument("--minilm-hidden-loss", type=float, default=1.0)
    parser.add_argument("--minilm-lr", type=float, default=5e-4)
    parser.add_argument("--minilm-steps", type=int, help="MiniLM: stop after this many optimizer steps")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", nargs="*", choices=list(FINETUNE_METHODS), help="Fine-tuning methods to train "
                        "(default: all; the interleaved step timing always covers all).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    SEEDS = tuple(range(args.seeds))
    if args.child:
        print(json.dumps(finetune_child(json.loads(args.child)), default=str))
        return 0
    import torch

    result: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "threads": 2, "python": platform.python_version(),
        "commands": ["python -m benchmarks.training " + " ".join(argv if argv is not None else sys.argv[1:])]}}
    with tempfile.TemporaryDirectory(prefix="deepopt-bench-train-") as tmp:
        work = Path(tmp)
        if "digits" in args.only:
            result["digits"] = bench_small_distill(work, "digits", td.digits_nchw(), td.digits_cnn, (32, 15),
                                                   args.digits_epochs, DIGITS_VARIANTS)
        if "cancer" in args.only:
            result["cancer"] = bench_small_distill(work, "cancer", td.cancer_data(), td.cancer_mlp, (256, 64), 40,
                                                   CANCER_VARIANTS)
        if "minilm" in args.only:
            result["minilm"] = bench_minilm_distill(work, args.minilm_epochs, args.minilm_extra_sentences,
                                                    args.minilm_hidden_loss, args.minilm_lr, args.minilm_steps)
        if "finetune" in args.only:
            result["finetune"] = bench_finetune(work, args.finetune_epochs, args.methods)
    previous = args.out / "training.json"
    if previous.exists() and set(args.only) != {"digits", "cancer", "minilm", "finetune"}:
        old = json.loads(previous.read_text())
        result["meta"]["commands"] = [*old.get("meta", {}).get("commands", []), *result["meta"]["commands"]]
        result = {**old, **result}
    result["targets"] = targets(result)
    write_reports(result, args.out)
    for t in result["targets"]:
        log(f"{'ok  ' if t['met'] else 'MISS'} {t['target']}: {t['measured']} (wanted {t['wanted']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
