"""Benchmark of the `auto` pass against a grid of hand-written recipes, with a 1% accuracy (or fidelity) bound.

    nice -n 10 .venv/bin/python -m benchmarks.auto                 # writes benchmarks/results/auto.{md,json}
    nice -n 10 .venv/bin/python -m benchmarks.auto --skip-minilm   # the digits CNN only (about a minute)
    nice -n 10 .venv/bin/python -m benchmarks.auto --skip-minilm --train   # the digits CNN with train data

With `--train` the digits CNN's train split is the job's train dataset: auto also searches its training recipes
(structured pruning with fine-tuning, a distilled half-width student), and the grid gets them too (each alone and
followed by dynamic and static int8); the row is "digits CNN (train data)". The models a run does not measure keep
their rows from the existing `auto.json` (merged, not dropped).

For each model (the digits CNN of the quantization benchmark, and all-MiniLM-L6-v2 exported as there), the eval
rows are split in two: the search half is what the `auto` job and the grid see, the held-out half checks the
chosen models again. The grid is every hand recipe of the quantization and pruning benchmarks (each quantization
mode, each pruning sparsity, and sparsity then mode), measured by the same trial runner the pass uses; its best
recipe is the fastest one that meets the bound on the search half. `auto` runs as a job would, through
`deepopt_core.optimize`. Finally the original, auto's model and the grid's best are timed again, interleaved
round-robin at batch 8 (so that machine load hits all three alike), and checked on the held-out half.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from deepopt_core.evaluate.metrics import cosine_fidelity

RESULTS = Path(__file__).resolve().parent / "results"
BOUND = 0.01
BATCH = 8
MODES: list[dict[str, Any]] = [
    {"type": "quantize", "mode": "dynamic"},
    {"type": "quantize", "mode": "static", "calibration": "percentile", "per_channel": True},
    {"type": "quantize", "mode": "fp16"},
    {"type": "quantize", "mode": "weight_only", "weight_dtype": "int8"},
    {"type": "quantize", "mode": "weight_only", "weight_dtype": "int4", "block_size": 32},
]
SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def grid_recipes(matmul: bool, train: bool = False) -> list[list[dict[str, Any]]]:
    """Each quantization mode alone, each sparsity alone, and each sparsity followed by each mode; with train data
    also auto's training recipes, alone and followed by dynamic and static int8."""
    from deepopt_core.passes.auto.search import training_candidates

    modes = [m for m in MODES if matmul or m["mode"] != "weight_only"]
    prunes = [{"type": "prune", "method": "magnitude", "sparsity": s} for s in SPARSITIES]
    recipes = [[m] for m in modes] + [[p] for p in prunes] + [[p, m] for p in prunes for m in modes]
    if train:
        for candidate in training_candidates(["prune", "distill"], "latency"):
            recipes += [candidate.recipe] + [candidate.recipe + [m] for m in MODES[:2]]
    return recipes


def label(recipe: list[dict[str, Any]]) -> str:
    parts = []
    for step in recipe:
        if step["type"] == "distill":
            parts.append(f"distill width {step['student']['width_ratio']}")
        elif step["type"] == "prune":
            parts.append(f"prune {'structured ' if step.get('method') == 'structured' else ''}{step['sparsity']}")
        else:
            parts.append(" ".join(str(step[k]) for k in ("mode", "weight_dtype") if k in step))
    return " + ".join(parts)


@dataclass
class ModelResult:
    model: str
    metric: str
    original_quality_held_out: float
    grid_trials: int = 0
    grid_seconds: float = 0.0
    grid_best: str | None = None
    grid_best_speedup: float | None = None
    grid_best_size_ratio: float | None = None
    grid_best_quality_held_out: float | None = None
    auto_trials: int = 0
    auto_skipped: int = 0
    auto_seconds: float = 0.0
    auto_choice: str = ""
    auto_met_bound: bool = False
    auto_speedup: float | None = None
    auto_size_ratio: float | None = None
    auto_quality_held_out: float | None = None
    auto_same_file_as_grid: bool | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)
    auto_log: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


def _interleaved_p50(paths: dict[str, Path], feed: dict[str, np.ndarray], rounds: int,
                     threads: int) -> dict[str, float]:
    sessions = {k: common.make_session(p, threads) for k, p in paths.items()}
    inputs = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    for key, session in sessions.items():
        for _ in range(3):
            session.run(None, inputs[key])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            began = time.perf_counter()
            session.run(None, inputs[key])
            times[key].append((time.perf_counter() - began) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _runner(model_path: Path, data: Path, work: Path, metric: str, train: Path | None = None) -> Any:
    """The trial runner of the `auto` pass on `model_path`, measuring on the dataset `data` (the grid uses it)."""
    from deepopt_core.datasets import load_dataset
    from deepopt_core.evaluate.inputs import dataset_feed, take
    from deepopt_core.formats import inspect_model
    from deepopt_core.formats.onnx_inspect import load_onnx
    from deepopt_core.passes.auto.trials import OnnxTrialRunner
    from deepopt_core.passes.context import PassContext

    info = inspect_model(model_path, "onnx")
    dataset = load_dataset(data)
    ctx = PassContext(workdir=work, info=info, sample=take(dataset_feed(info, dataset, max_rows=2), 0, 2),
                      eval=dataset, source=model_path, train=load_dataset(train) if train else None)
    return OnnxTrialRunner(load_onnx(model_path), ctx, metric=metric, batch_size=BATCH, num_samples=1024)


def bench(name: str, model_path: Path, search: Path, quality_of: Any, timing_feed: dict[str, np.ndarray],
          metric: str, work: Path, args: argparse.Namespace, rounds: int, train: Path | None = None) -> ModelResult:
    """Grid, then auto, then the final interleaved timing and the held-out check."""
    from deepopt_core.passes.auto.search import TrialFailed
    from deepopt_core.passes.auto.trials import has_matmul
    from deepopt_core.pipeline import optimize

    result = ModelResult(name, metric, quality_of(model_path))
    grid_dir = work / f"{name}-grid"
    runner = _runner(model_path, search, grid_dir, metric, train)
    started = time.perf_counter()
    baseline = runner.baseline()
    best: tuple[float, int, str] | None = None
    for number, recipe in enumerate(grid_recipes(has_matmul(runner.model), train is not None),
                                        start=1):
        common.log(f"{name} grid {number}: {label(recipe)}")
        began = time.perf_counter()
        row: dict[str, Any] = {"trial": number, "recipe": label(recipe)}
        try:
            measured = runner.run(number, recipe)
        except TrialFailed as exc:
            row["error"] = str(exc)[:200]
        else:
            drop = baseline.quality - measured.quality
            row.update(quality=round(measured.quality, 5), drop=round(drop, 5),
                       speedup=round(baseline.latency_ms / measured.latency_ms, 3),
                       size_ratio=round(measured.size_bytes / baseline.size_bytes, 3), meets_bound=drop <= BOUND)
            if drop <= BOUND and (best is None or measured.latency_ms < best[0]):
                best = (measured.latency_ms, number, label(recipe))
        row["seconds"] = round(time.perf_counter() - began, 2)
        result.grid.append(row)
    result.grid_trials = len(result.grid)
    result.grid_seconds = round(time.perf_counter() - started, 1)

    common.log(f"{name}: auto ...")
    spec = {"type": "auto", "objective": "latency", "max_accuracy_drop": BOUND, "batch_size": BATCH,
            "budget": {"trials": args.trials, "minutes": args.minutes}}
    began = time.perf_counter()
    if train is not None:
        spec["allowed"] = ["quantize", "prune", "distill"]
    data = {"eval": search, **({"train": train} if train is not None else {})}
    out = optimize(model_path, [spec], data, workdir=work / f"{name}-auto",
                   benchmark={"batch_sizes": [BATCH], "runs": 20})
    result.auto_seconds = round(time.perf_counter() - began, 1)
    (decision,) = [d for d in out.decisions if d["type"] == "auto"]
    (artifact,) = [a for a in out.artifacts if a.kind == "model"]
    result.auto_trials, result.auto_skipped = decision["trials_run"], decision["trials_skipped"]
    result.auto_choice, result.auto_met_bound = decision["chosen_label"], decision["met_bound"]
    result.auto_log = [{k: t.get(k) for k in ("trial", "label", "status", "drop", "speedup", "size_ratio", "reason")}
                       for t in decision["trials"]]

    paths = {"original": model_path, "auto": Path(artifact.path)}
    if best is not None:
        result.grid_best = best[2]
        paths["grid"] = runner.paths[best[1]]
    latency = _interleaved_p50(paths, timing_feed, rounds, args.threads)
    result.latency_ms = {k: round(v, 4) for k, v in latency.items()}
    sizes = {k: common.file_size(p) for k, p in paths.items()}
    result.auto_speedup = round(latency["original"] / latency["auto"], 3)
    result.auto_size_ratio = round(sizes["auto"] / sizes["original"], 3)
    result.auto_quality_held_out = round(quality_of(paths["auto"]), 5)
    if "grid" in paths:
        result.grid_best_speedup = round(latency["original"] / latency["grid"], 3)
        result.grid_best_size_ratio = round(sizes["grid"] / sizes["original"], 3)
        result.grid_best_quality_held_out = round(quality_of(paths["grid"]), 5)

    def check(what: str, value: Any, ok: bool, goal: str) -> None:
        result.checks.append({"target": f"{name}: {what}", "value": value, "goal": goal, "met": bool(ok)})

    if "grid" in paths:
        import hashlib

        digests = {k: hashlib.sha256(paths[k].read_bytes()).hexdigest() for k in ("auto", "grid")}
        result.auto_same_file_as_grid = digests["auto"] == digests["grid"]
    runner.close()
    grid_speedup = result.grid_best_speedup or 1.0
    check("auto speed-up vs the grid's best (interleaved)", result.auto_speedup,
          result.auto_speedup >= 0.97 * grid_speedup, f">= 0.97 x {grid_speedup} (the grid's best; 3% timing noise)")
    check("auto trials vs grid trials", result.auto_trials, result.auto_trials < result.grid_trials,
          f"< {result.grid_trials}")
    drop = result.original_quality_held_out - result.auto_quality_held_out
    check(f"auto held-out {metric} drop", round(drop, 5), drop <= BOUND, f"<= {BOUND}")
    return result


def bench_digits(work: Path, args: argparse.Namespace) -> ModelResult:
    import torch

    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = common.digits_data()
    fp32 = common.export_digits(common.train_digits_cnn(x_train, y_train), work / "digits.onnx")
    half = len(x_test) // 2
    search = work / "digits_search.npz"
    np.savez(search, pixels=x_test[:half], labels=y_test[:half])

    def held_out_accuracy(path: Path) -> float:
        return common.accuracy(common.make_session(path, args.threads), x_test[half:], y_test[half:])

    train = None
    if args.train:
        train = work / "digits_train.npz"
        np.savez(train, pixels=x_train, labels=y_train)
    name = "digits CNN (train data)" if args.train else "digits CNN"
    return bench(name, fp32, search, held_out_accuracy, {"pixels": x_test[:BATCH]}, "accuracy", work, args,
                 rounds=args.rounds * 10, train=train)  # a 0.1 ms model: many rounds cost nothing, steady the median


def bench_minilm(work: Path, args: argparse.Namespace) -> ModelResult:
    fp32 = common.export_minilm(work / "minilm.onnx")
    tokenizer = common.load_tokenizer()
    sentences = common.load_sentences(args.sentences)
    half = len(sentences) // 2
    # Padded to the longest search sentence, not to 128: the pass's fidelity is the cosine of the whole
    # last_hidden_state, padding positions included (measured both ways: int8 misses the bound either way).
    feed = common.tokenize(tokenizer, sentences[:half])
    search = work / "minilm_search.npz"
    np.savez(search, **{k: v for k, v in feed.items()})
    held_feeds = common.sentence_feeds(tokenizer, sentences[half:])
    reference = common.embeddings(common.make_session(fp32, args.threads), held_feeds)

    def held_out_fidelity(path: Path) -> float:
        return cosine_fidelity(reference, common.embeddings(common.make_session(path, args.threads), held_feeds))

    timing = common.fixed_batch(tokenizer, sentences, BATCH)
    return bench("MiniLM", fp32, search, held_out_fidelity, timing, "fidelity", work, args, rounds=args.rounds)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_reports(results: list[ModelResult], meta: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "models": [asdict(r) for r in results]}
    (out_dir / "auto.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [
        "# auto against a grid of hand recipes (1% bound)",
        "",
        f"Generated by `python -m benchmarks.auto` on {meta['date']}: {meta['machine']}, ONNX Runtime "
        f"{meta['onnxruntime']}, {meta['threads']} intra-op threads, batch {BATCH}. Search on half of the eval rows, "
        "quality re-checked on the other half; latency = median of interleaved runs of the original, auto's "
        f"model and the grid's best ({meta['rounds']} rounds; digits {10 * meta['rounds']}). \"same file\": auto "
        "chose the grid's best recipe and wrote the identical model, so a speed-up difference between them is noise.",
        *([f"Rows of {', '.join(meta['kept_from_previous_run']['models'])} are kept from the run of "
           f"{meta['kept_from_previous_run']['date']} (same settings; this run did not measure them)."]
          if meta.get("kept_from_previous_run") else []),
        "",
        "| model | who | recipe | trials | wall s | speed-up b8 | x size | held-out quality | met bound |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r.model} | original | - | - | - | 1.000 | 1.000 | {_fmt(r.original_quality_held_out, 4)} "
                     f"{r.metric} | - |")
        lines.append(f"| {r.model} | auto | {r.auto_choice} | {r.auto_trials} (+{r.auto_skipped} rejected unrun) | "
                     f"{_fmt(r.auto_seconds, 1)} | {_fmt(r.auto_speedup)} | {_fmt(r.auto_size_ratio)} | "
                     f"{_fmt(r.auto_quality_held_out, 4)} | {'yes' if r.auto_met_bound else 'no'}"
                     f"{' (same file as the grid best)' if r.auto_same_file_as_grid else ''} |")
        lines.append(f"| {r.model} | grid best | {r.grid_best or '-'} | {r.grid_trials} | {_fmt(r.grid_seconds, 1)} | "
                     f"{_fmt(r.grid_best_speedup)} | {_fmt(r.grid_best_size_ratio)} | "
                     f"{_fmt(r.grid_best_quality_held_out, 4)} | {'yes' if r.grid_best else '-'} |")
    lines += ["", "## Checks", "", "| check | value | goal | met |", "|---|---:|---|---|"]
    for r in results:
        for c in r.checks:
            lines.append(f"| {c['target']} | {c['value']} | {c['goal']} | {'yes' if c['met'] else '**no**'} |")
    for r in results:
        lines += ["", f"## {r.model}: auto's trials", "", "| # | recipe | status | drop | speed-up | x size | note |",
                  "|---:|---|---|---:|---:|---:|---|"]
        for t in r.auto_log:
            lines.append(f"| {t['trial'] or '-'} | {t['label']} | {t['status']} | {_fmt(t['drop'], 4)} | "
                         f"{_fmt(t['speedup'])} | {_fmt(t['size_ratio'])} | {t.get('reason') or ''} |")
        lines += ["", f"## {r.model}: the grid", "", "| # | recipe | drop | speed-up | x size | meets bound |",
                  "|---:|---|---:|---:|---:|---|"]
        for g in r.grid:
            lines.append(f"| {g['trial']} | {g['recipe']} | {_fmt(g.get('drop'), 4)} | {_fmt(g.get('speedup'))} | "
                         f"{_fmt(g.get('size_ratio'))} | {g.get('meets_bound', g.get('error', ''))} |")
    (out_dir / "auto.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for auto.json / .md")
    parser.add_argument("--sentences", type=int, default=200, help="MiniLM sentences (half search, half held out)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds at batch 8 (digits: 10x)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (final timing)")
    parser.add_argument("--trials", type=int, default=12, help="auto's trial budget")
    parser.add_argument("--minutes", type=float, default=20.0, help="auto's time budget")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--train", action="store_true", help="give the digits CNN's train split as train data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import onnxruntime

    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__, "threads": args.threads, "rounds": args.rounds,
        "bound": BOUND, "batch": BATCH, "load_average_start": os.getloadavg(),
    }
    results: list[ModelResult] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepopt-bench-auto-") as tmp:
        work = Path(tmp)
        if not args.skip_digits:
            results.append(bench_digits(work, args))
        if not args.skip_minilm:
            results.append(bench_minilm(work, args))
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = os.getloadavg()
    previous = args.out / "auto.json"
    if previous.exists():  # keep the rows of the models this run did not measure
        measured = {r.model for r in results}
        before = json.loads(previous.read_text())
        kept = [ModelResult(**m) for m in before["models"] if m["model"] not in measured]
        if kept:
            meta["kept_from_previous_run"] = {"models": [r.model for r in kept], "date": before["meta"].get("date"),
                                              "meta": before["meta"]}
        results = kept + results
    write_reports(results, meta, args.out)
    common.log((args.out / "auto.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
