"""The conformance matrix: every architecture x upload format x pass variant x output format, run as a user's
job runs, each cell ending as succeeded (outputs verified) or refused at submit (a 422 naming the field).

A cell goes exactly the user's way: the real FastAPI app in-process on a fresh embedded data dir (SQLite and the
filesystem broker, migrated), the model uploaded once (`POST /v1/models`, inspected in the sandboxed child),
datasets fitted to the inspected inputs, `POST /v1/jobs`; a 202 job runs at once in this process through
`worker.executor.execute_job` (the same sandboxed child a Celery worker starts), then `GET /v1/jobs/{id}`. A
failed job is a defect, whatever its error: the rule is that the upload's inspection lets the submit check
refuse whatever cannot run.

    python -m benchmarks.matrix [--slice fast|full] [--only FAMILY_OR_ARCH ...] [--render] [--results PATH]
    python -m benchmarks.matrix --pending --shard 1/2 --results /tmp/a.json   # and 2/2 beside it, then:
    python -m benchmarks.matrix --merge /tmp/a.json /tmp/b.json

writes `benchmarks/results/matrix.{json,md}` and `docs/support-matrix.md` (`benchmarks/matrix_report.py`). A run of
part of the matrix (`--only`, `--slice fast`) merges into the results already there: each cell keeps the commit
and time of the run that produced it, and cells never run say so.

`--pending` keeps the cells the results have not run (or left failed); `--shard K/N` splits a selection into N
disjoint parts by cell id, so N processes (or machines) run a long matrix side by side, each into its own
results file, and `--merge` folds their runs into the committed results.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import matrix_models as mm

log = logging.getLogger("deepopt.matrix")

RESULTS_JSON = mm.ROOT / "benchmarks" / "results" / "matrix.json"
OUTPUT_FORMATS = ("onnx", "torchscript", "torch_export", "hf")
# Few rows and steps: a cell checks that the path works and measures it, it does not train a good model.
ROWS = {"calibration": 16, "eval": 16, "train": 32}
BENCHMARK = {"batch_sizes": [1], "runs": 5, "warmup": 1, "threads": 1}
TRAIN = {"max_steps": 2, "batch_size": 8, "validation_split": 0.0}


@dataclass(frozen=True)
class Variant:
    """One pass variant: its spec and which datasets it reads (the eval set goes with every job)."""

    name: str
    spec: dict[str, Any]
    data: tuple[str, ...] = ()

    @property
    def pass_type(self) -> str:
        return str(self.spec["type"])


VARIANTS: tuple[Variant, ...] = (
    Variant("quantize.dynamic", {"type": "quantize", "mode": "dynamic"}),
    Variant("quantize.static", {"type": "quantize", "mode": "static", "num_samples": 8}, ("calibration",)),
    Variant("quantize.weight_only_int8", {"type": "quantize", "mode": "weight_only", "weight_dtype": "int8",
                                          "algorithm": "rtn"}),
    Variant("quantize.weight_only_int4", {"type": "quantize", "mode": "weight_only", "weight_dtype": "int4",
                                          "algorithm": "rtn"}),
    Variant("quantize.fp16", {"type": "quantize", "mode": "fp16"}),
    Variant("quantize.bf16", {"type": "quantize", "mode": "bf16"}),
    Variant("prune.magnitude", {"type": "prune", "method": "magnitude", "sparsity": 0.5}),
    Variant("prune.obs_fisher", {"type": "prune", "method": "obs", "sparsity": 0.5, "num_gradients": 8,
                                 "block_size": 8}, ("calibration",)),
    Variant("prune.obs_inputs", {"type": "prune", "method": "obs", "hessian": "inputs", "sparsity": 0.5,
                                 "num_gradients": 8}, ("calibration",)),
    Variant("prune.nm", {"type": "prune", "method": "nm", "n": 2, "m": 4}),
    Variant("prune.structured", {"type": "prune", "method": "structured", "sparsity": 0.5}, ("calibration",)),
    Variant("distill.keep_every", {"type": "distill", "student": {"keep_every": 2}, **TRAIN}, ("train",)),
    Variant("distill.width_ratio", {"type": "distill", "student": {"width_ratio": 0.5}, **TRAIN}, ("train",)),
    Variant("finetune.lora", {"type": "finetune", "method": "lora", "r": 4, **TRAIN}, ("train",)),
    Variant("finetune.lora_int8_base", {"type": "finetune", "method": "lora", "r": 4, "base_quantization": "int8",
                                        **TRAIN}, ("train",)),
    Variant("finetune.prefix", {"type": "finetune", "method": "prefix", "num_virtual_tokens": 4, **TRAIN},
            ("train",)),
    Variant("finetune.adapter_series", {"type": "finetune", "method": "adapter_series", "bottleneck_size": 8,
                                        **TRAIN}, ("train",)),
    Variant("finetune.adapter_parallel", {"type": "finetune", "method": "adapter_parallel", "bottleneck_size": 8,
                                          **TRAIN}, ("train",)),
    Variant("finetune.full", {"type": "finetune", "method": "full", **TRAIN}, ("train",)),
    Variant("export", {"type": "export"}),
)
VARIANT_BY_NAME = {variant.name: variant for variant in VARIANTS}

# The fast slice (`make test`): one model per family in its most common upload format, one variant of every
# pass type, the upload's own output format. Chosen so that it runs in a few minutes on 2 cores.
# ONNX is the output users deploy most, and every upload format can produce it; the Hugging Face folder output
# gets one cell of its own (a merged LoRA fine-tune, the README's example).
FAST_MODELS = (("resnet", "torch_export"), ("vit", "onnx"), ("bert", "hf"), ("gpt2", "hf"))
FAST_VARIANTS = ("quantize.dynamic", "prune.magnitude", "distill.width_ratio", "finetune.lora", "export")
FAST_EXTRA = (("bert", "hf", "finetune.lora", "hf"),)


@dataclass(frozen=True)
class Cell:
    arch: str
    upload: str
    variant: str
    output: str

    @property
    def id(self) -> str:
        return f"{self.arch}/{self.upload}/{self.variant}/{self.output}"


def all_cells() -> list[Cell]:
    """The whole matrix, in a fixed order (the results file and the docs list cells in this order)."""
    return [Cell(arch.name, fmt, variant.name, output)
            for arch in mm.ARCHITECTURES for fmt in arch.formats
            for variant in VARIANTS for output in OUTPUT_FORMATS]


def fast_cells() -> list[Cell]:
    cells = [Cell(arch, fmt, variant, "onnx") for arch, fmt in FAST_MODELS for variant in FAST_VARIANTS]
    return cells + [Cell(*extra) for extra in FAST_EXTRA]


def in_shard(cell_id: str, shard: tuple[int, int]) -> bool:
    """Whether `cell_id` falls in shard K of N (1-based): a stable hash of the id, the same in every process."""
    index, count = shard
    return int(hashlib.sha256(cell_id.encode()).hexdigest(), 16) % count == index - 1


def parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(index), int(count)


def select(cells: list[Cell], only: list[str] | None = None, uploads: list[str] | None = None,
           variants: list[str] | None = None, outputs: list[str] | None = None) -> list[Cell]:
    """Cells whose architecture or family is in `only`, upload format in `uploads`, variant (or pass type) in
    `variants`, output in `outputs`; a filter left None keeps all."""
    def keep(cell: Cell) -> bool:
        return ((not only or cell.arch in only or mm.BY_NAME[cell.arch].family in only)
                and (not uploads or cell.upload in uploads)
                and (not variants or cell.variant in variants or cell.variant.split(".")[0] in variants)
                and (not outputs or cell.output in outputs))

    return [cell for cell in cells if keep(cell)]


# ---------------------------------------------------------------------------------------------------------------
# The service, in-process
# ---------------------------------------------------------------------------------------------------------------

def _reset_app_caches() -> None:
    # The app's settings, engine and storage are cached per process; a new data dir needs fresh ones.
    from app.api.deps import get_storage
    from app.core.broker import get_sender
    from app.core.config import get_settings
    from app.core.db import get_engine, get_sessionmaker

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cached in (get_settings, get_engine, get_sessionmaker, get_storage, get_sender):
        cached.cache_clear()


@contextmanager
def service(data_dir: Path) -> Iterator[Any]:
    """An httpx client on the real app over a fresh embedded data dir (as tests/conftest.py's `client`)."""
    from fastapi.testclient import TestClient

    saved = {name: os.environ.get(name) for name in
             ("DEEPOPT_DATA_DIR", "DEEPOPT_DATABASE_URL", "DEEPOPT_BROKER_URL", "DEEPOPT_API_KEYS")}
    os.environ["DEEPOPT_DATA_DIR"] = str(data_dir)
    for name in ("DEEPOPT_DATABASE_URL", "DEEPOPT_BROKER_URL", "DEEPOPT_API_KEYS"):
        os.environ.pop(name, None)
    _reset_app_caches()
    try:
        from app.core.migrate import upgrade
        from app.main import create_app

        upgrade()
        with TestClient(create_app()) as client:
            yield client
    finally:
        _reset_app_caches()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _problems(response: Any) -> list[dict[str, str]]:
    """The 422's field errors as {field, message}; the problem's detail when it lists none."""
    try:
        body = response.json()
    except ValueError:
        return [{"field": "", "message": response.text[:300]}]
    found = [{"field": str(e.get("field", "")), "message": str(e.get("message", ""))[:300]}
             for e in body.get("errors") or [] if isinstance(e, dict)]
    return found or [{"field": "", "message": str(body.get("detail") or body)[:300]}]


@dataclass
class Upload:
    """An uploaded model and its datasets, shared by all the cells of one architecture x upload format."""

    model: dict[str, Any] | None = None
    refused: dict[str, Any] | None = None  # why the model or its file could not be uploaded
    datasets: dict[str, str] = field(default_factory=dict)  # role -> dataset id


def _fitted_rows(arch: mm.Architecture, model: dict[str, Any], rows: int, seed: int) -> dict[str, np.ndarray]:
    """Arrays named after the model's inspected inputs, in order; values from the architecture's real inputs.

    Matched by position, since exporters may rename inputs. An inspected input the architecture does not have
    (a Hugging Face vision model inspected as text, say) gets rows of its inspected dtype, so the dataset fits
    what inspection said, and any failure is the inspection's.
    """
    feeds = mm.example_inputs(arch, rows=rows, seed=seed)
    values = [feeds[name] for name in arch.input_names]
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(model["inputs"]):
        name, dtype = tensor["name"], str(tensor.get("dtype") or "float32")
        if name in feeds:
            arrays[name] = feeds[name]
        elif index < len(values) and (dtype.startswith("int") == (values[index].dtype.kind == "i")):
            arrays[name] = values[index]
        elif dtype.startswith("int"):
            arrays[name] = np.ones((rows, mm.SEQUENCE), np.int64)
        else:
            arrays[name] = np.random.default_rng(seed).normal(size=(rows, mm.SEQUENCE)).astype(np.float32)
    return arrays


def _labels(arch: mm.Architecture, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Class labels: the original model's predictions where it is a classifier (so the task is learnable and
    accuracy reads as agreement with the original); else a rule on the first token, 4 classes."""
    if arch.family in ("cnn", "vit") or (arch.family == "encoder" and arch.name != "minilm"):
        return np.asarray(mm.reference_outputs(arch, feeds).argmax(-1), np.int64)
    return np.asarray(feeds["input_ids"][:, 0] % mm.NUM_LABELS, np.int64)


def upload(client: Any, arch: mm.Architecture, fmt: mm.UploadFormat, cache_dir: Path) -> Upload:
    try:
        path = mm.model_file(arch, fmt, cache_dir)
    except RuntimeError as exc:
        return Upload(refused={"stage": "build", "problems": [{"field": "", "message": str(exc)[:300]}]})
    with open(path, "rb") as handle:
        response = client.post("/v1/models", files={"file": (path.name, handle)}, data={"name": path.stem})
    if response.status_code != 201:
        return Upload(refused={"stage": "upload", "status": response.status_code, "problems": _problems(response)})
    model: dict[str, Any] = response.json()
    result = Upload(model=model)
    classifier = arch.family != "decoder" and arch.name != "minilm"
    roles = ("calibration", "eval", "train") if classifier else ("calibration", "eval", "train", "unlabeled")
    for seed, role in enumerate(roles):
        rows = ROWS.get(role, ROWS["train"])
        feeds = mm.example_inputs(arch, rows=rows, seed=seed + 1)
        arrays = _fitted_rows(arch, model, rows, seed + 1)
        # Labels where they mean something: on train always (finetune trains a task head on them), on the others
        # only for classifiers; a model without a class output distills on `unlabeled` train rows, as its users
        # would (an LM's or an encoder's hidden states have no class to take a cross-entropy with).
        if role == "train" or (classifier and role != "unlabeled"):
            arrays["labels"] = _labels(arch, feeds)
        answer = client.post("/v1/datasets", files={"file": (f"{role}.npz", _npz(arrays))})
        if answer.status_code != 201:
            return Upload(refused={"stage": f"dataset {role}", "status": answer.status_code,
                                   "problems": _problems(answer)})
        result.datasets[role] = answer.json()["id"]
    return result


def _artifact_rows(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The original's benchmark and one row per model artifact (size, latency, fidelity, accuracy)."""
    by_artifact = {b["artifact_id"]: b for b in job.get("benchmarks", [])}
    original = by_artifact.get(None) or {}
    rows = []
    for artifact in job.get("artifacts", []):
        if artifact["kind"] != "model":
            continue
        bench = by_artifact.get(artifact["id"]) or {}
        metrics = bench.get("metrics") or {}
        rows.append({"format": artifact["format"], "size_bytes": artifact["size_bytes"],
                     "latency_ms_p50": bench.get("latency_ms_p50"),
                     "fidelity_cosine": metrics.get("fidelity_cosine"),
                     "top1_agreement": metrics.get("top1_agreement"), "accuracy": metrics.get("accuracy"),
                     "num_parameters": bench.get("num_parameters"), "sparsity": bench.get("sparsity"),
                     "benchmarked": bool(bench)})
    return original, rows


def _verify(cell: Cell, rows: list[dict[str, Any]]) -> str | None:
    """Why a succeeded job's outputs are not what was asked, or None. The service already loaded and ran each
    output before storing it; here: the asked format is there, benchmarked, with a finite fidelity."""
    asked = [r for r in rows if r["format"] == cell.output]
    if not asked:
        return f"no {cell.output} model artifact (got {[r['format'] for r in rows]})"
    for row in asked:
        if not row["benchmarked"] or row["latency_ms_p50"] is None:
            return f"the {cell.output} artifact has no benchmark"
        fidelity = row["fidelity_cosine"]
        if fidelity is None and cell.variant.startswith("finetune."):
            continue  # a new task head: its outputs have nothing to compare with the original's
        if fidelity is None or not math.isfinite(float(fidelity)):
            return f"the {cell.output} artifact has no finite fidelity against the original ({fidelity})"
    return None


def _check_downloads(client: Any, job: dict[str, Any], output: str) -> str | None:
    """Why a model artifact of `output` does not download as the bytes its record names, or None."""
    for artifact in job.get("artifacts", []):
        if artifact["kind"] != "model" or artifact["format"] != output:
            continue
        response = client.get(artifact["download_url"])
        if response.status_code != 200:
            return f"downloading {artifact['filename']} answered {response.status_code}"
        if hashlib.sha256(response.content).hexdigest() != artifact["sha256"]:
            return f"{artifact['filename']} does not match its sha256"
    return None


def run_cell(client: Any, cell: Cell, uploaded: Upload) -> dict[str, Any]:
    """One cell, as its user's job would go. Returns the outcome record (see the module docstring)."""
    from worker.executor import execute_job

    started = time.monotonic()
    record: dict[str, Any] = {"id": cell.id}
    if uploaded.model is None:
        refused = uploaded.refused or {}
        outcome = "not_built" if refused.get("stage") == "build" else "refused_upload"
        return {**record, "outcome": outcome, "problems": refused.get("problems", []), "seconds": 0.0}
    variant = VARIANT_BY_NAME[cell.variant]
    body: dict[str, Any] = {"model_id": uploaded.model["id"], "passes": [variant.spec], "outputs": [cell.output],
                            "eval_dataset_id": uploaded.datasets["eval"], "benchmark": BENCHMARK}
    for role in variant.data:
        body[f"{role}_dataset_id"] = uploaded.datasets[role]
    if variant.pass_type == "distill" and "unlabeled" in uploaded.datasets:
        body["train_dataset_id"] = uploaded.datasets["unlabeled"]
    response = client.post("/v1/jobs", json=body)
    if response.status_code == 422:
        return {**record, "outcome": "refused", "problems": _problems(response),
                "seconds": round(time.monotonic() - started, 2)}
    if response.status_code != 202:
        return {**record, "outcome": "failed", "error": {"code": f"http_{response.status_code}",
                                                         "message": response.text[:500]}, "seconds": 0.0}
    job_id = response.json()["id"]
    execute_job(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    record["seconds"] = round(time.monotonic() - started, 2)
    if job["status"] != "succeeded":
        error = job.get("error") or {"code": job["status"], "message": ""}
        message = str(error["message"])
        if len(message) > 1000:  # a child's traceback: its head says where, its tail what
            message = f"{message[:300]} ... {message[-700:]}"
        return {**record, "outcome": "failed", "error": {"code": error["code"], "message": message}}
    original, rows = _artifact_rows(job)
    problem = _verify(cell, rows) or _check_downloads(client, job, cell.output)
    if problem:
        return {**record, "outcome": "failed", "error": {"code": "unverified_output", "message": problem}}
    return {**record, "outcome": "succeeded", "artifacts": rows, "warnings": job.get("warnings", [])[:5],
            "original": {"size_bytes": original.get("size_bytes"), "latency_ms_p50": original.get("latency_ms_p50"),
                         "accuracy": (original.get("metrics") or {}).get("accuracy")}}


def run_cells(cells: list[Cell], *, cache_dir: Path = mm.DEFAULT_CACHE, data_dir: Path | None = None,
              on_cell: Callable[[Cell, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run `cells` on one fresh in-process service; each model is uploaded once. Returns id -> record."""
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="deepopt-matrix-") as scratch, \
            service(data_dir or Path(scratch) / "data") as client:
        uploads: dict[tuple[str, str], Upload] = {}
        for cell in cells:
            key = (cell.arch, cell.upload)
            if key not in uploads:
                arch = mm.BY_NAME[cell.arch]
                uploads[key] = upload(client, arch, cell.upload, cache_dir)  # type: ignore[arg-type]
            try:
                record = run_cell(client, cell, uploads[key])
            except Exception as exc:  # the harness must keep going: the cell is recorded as a defect
                log.exception("cell %s", cell.id)
                record = {"id": cell.id, "outcome": "failed", "seconds": 0.0,
                          "error": {"code": "harness_error", "message": f"{type(exc).__name__}: {exc}"[:800]}}
            records[cell.id] = record
            if on_cell is not None:
                on_cell(cell, record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

def commit_hash() -> str:
    """HEAD, with `+dirty` when tracked files differ from it (the run then measured uncommitted code too)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=mm.ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=mm.ROOT,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if changed else head


def definition() -> dict[str, Any]:
    """What the matrix is, for the results file (the staleness test compares it with the code)."""
    return {"architectures": [{"name": a.name, "family": a.family, "class": a.hf_class or "torch.nn.Sequential",
                               "formats": list(a.formats)} for a in mm.ARCHITECTURES],
            "variants": {v.name: v.spec for v in VARIANTS}, "outputs": list(OUTPUT_FORMATS),
            "fast": [c.id for c in fast_cells()], "build_version": mm.BUILD_VERSION}


def merge_files(results: dict[str, Any] | None, others: list[dict[str, Any]]) -> dict[str, Any]:
    """`results` with the cells and runs of `others` (results files of the same definition) laid over it: a cell
    takes the record of the latest run that ran it, and keeps its own run id, commit and time."""
    merged = results or {"definition": definition(), "runs": [], "cells": []}
    for other in others:
        if other.get("definition") != definition():
            raise ValueError("a results file to merge was written by another matrix definition: rerun it")
        runs = {r["id"]: r for r in merged.get("runs", [])}
        runs.update({r["id"]: r for r in other.get("runs", [])})
        newer = {c["id"]: c for c in other["cells"] if c.get("outcome") != "not_run"}
        cells = [newer.get(c["id"], c) if runs.get(newer.get(c["id"], {}).get("run"), {}).get("started_at", "")
                 >= runs.get(c.get("run"), {}).get("started_at", "") else c
                 for c in merged["cells"]]
        kept = {c.get("run") for c in cells}
        merged = {"definition": definition(), "runs": sorted((r for r in runs.values() if r["id"] in kept),
                                                             key=lambda r: r["started_at"]), "cells": cells}
    return merged


def merge(previous: dict[str, Any] | None, records: dict[str, dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The results file: every defined cell, the new records over the previous ones, each with its run."""
    old = {c["id"]: c for c in (previous or {}).get("cells", [])}
    runs = [r for r in (previous or {}).get("runs", []) if any(c.get("run") == r["id"] for c in old.values())]
    runs.append(run)
    cells = []
    for cell in all_cells():
        if cell.id in records:
            cells.append({**records[cell.id], "run": run["id"]})
        elif cell.id in old and old[cell.id].get("outcome") != "not_run":
            cells.append(old[cell.id])
        else:
            cells.append({"id": cell.id, "outcome": "not_run"})
    kept = {c.get("run") for c in cells}
    return {"definition": definition(), "runs": [r for r in runs if r["id"] in kept], "cells": cells}


def main(argv: list[str] | None = None) -> int:
    from benchmarks import matrix_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slice", choices=("fast", "full"), default="full")
    parser.add_argument("--only", nargs="+", metavar="FAMILY_OR_ARCH",
                        help=f"families {sorted({a.family for a in mm.ARCHITECTURES})} or architectures "
                             f"{[a.name for a in mm.ARCHITECTURES]}")
    parser.add_argument("--uploads", nargs="+", choices=mm.UPLOAD_FORMATS, help="upload formats to run")
    parser.add_argument("--variants", nargs="+", metavar="VARIANT",
                        help=f"pass variants or types: {[v.name for v in VARIANTS]}")
    parser.add_argument("--outputs", nargs="+", choices=OUTPUT_FORMATS, help="output formats to run")
    parser.add_argument("--cells", nargs="+", metavar="CELL_ID",
                        help="only these cells (ids as in the results: arch/upload/variant/output), e.g. to rerun "
                             "the ones a run left failed")
    parser.add_argument("--pending", action="store_true",
                        help="only the cells the results file has not run, or left failed")
    parser.add_argument("--shard", type=parse_shard, metavar="K/N",
                        help="only shard K of N of the selected cells (for N runs side by side)")
    parser.add_argument("--spread", action="store_true",
                        help="run the cells in a fixed mixed order, so a run stopped part way holds a cross-section")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="RESULTS",
                        help="fold these results files (from --results runs) into the results, then render")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the results file")
    parser.add_argument("--cache-dir", type=Path, default=mm.DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=RESULTS_JSON,
                        help="the results file to merge into; the docs are rendered only from the committed one")
    args = parser.parse_args(argv)
    results_json: Path = args.results
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    previous = json.loads(results_json.read_text()) if results_json.exists() else None
    if args.merge:
        previous = merge_files(previous, [json.loads(path.read_text()) for path in args.merge])
        results_json.write_text(json.dumps(previous, indent=1) + "\n")
    elif not args.render:
        cells = select(fast_cells() if args.slice == "fast" else all_cells(), args.only, args.uploads,
                       args.variants, args.outputs)
        if args.cells:
            unknown = set(args.cells) - {cell.id for cell in cells}
            if unknown:
                parser.error(f"no such cells (or outside the other filters): {sorted(unknown)[:5]}")
            cells = [cell for cell in cells if cell.id in set(args.cells)]
        if args.pending:
            ran = {c["id"] for c in (previous or {}).get("cells", []) if c.get("outcome") not in ("not_run", "failed")}
            cells = [cell for cell in cells if cell.id not in ran]
        if args.shard:
            cells = [cell for cell in cells if in_shard(cell.id, args.shard)]
        if args.spread:
            cells.sort(key=lambda cell: hashlib.sha256(f"spread:{cell.id}".encode()).digest())
        started = datetime.now(UTC)
        base = previous
        run: dict[str, Any] = {
            "id": started.strftime("%Y%m%dT%H%M%SZ"), "started_at": started.isoformat(timespec="seconds"),
            "finished_at": None, "commit": commit_hash(), "slice": args.slice,
            "only": [f"{name}={','.join(values)}" for name, values in (
                ("only", args.only), ("uploads", args.uploads), ("variants", args.variants),
                ("outputs", args.outputs), ("cells", [f"{len(args.cells)} listed"] if args.cells else None),
                ("pending", ["yes"] if args.pending else None),
                ("shard", ["/".join(map(str, args.shard))] if args.shard else None),
                ("spread", ["yes"] if args.spread else None))
                if values],
            "cells": 0, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
        done: dict[str, dict[str, Any]] = {}

        def save(cell: Cell, record: dict[str, Any]) -> None:
            # After every cell, so a run stopped part way (a long `make matrix`) keeps what it measured.
            done[cell.id] = record
            run.update(cells=len(done), finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
            print(f"[{len(done)}/{len(cells)}] {cell.id}: {record['outcome']} {record.get('seconds', 0):.1f}s "
                  f"{(record.get('error') or {}).get('code', '')}", flush=True)
            results_json.parent.mkdir(parents=True, exist_ok=True)
            partial = results_json.with_suffix(".json.tmp")
            partial.write_text(json.dumps(merge(base, done, dict(run)), indent=1) + "\n")
            partial.replace(results_json)

        run_cells(cells, cache_dir=args.cache_dir, on_cell=save)
        previous = json.loads(results_json.read_text()) if done else base
    if previous is None:
        parser.error("no results to render: run the matrix first")
    if results_json.resolve() == RESULTS_JSON.resolve():
        matrix_report.write_all(previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
