"""Run a pipeline of passes on a model: plan, run each track, save and verify outputs, benchmark.

Every output file is loaded back from disk and run on sample inputs before it is reported; a file that does not
load or run (or gives non-finite outputs) fails the job. The original and each output are then benchmarked with
the same settings and inputs (:mod:`deepopt_core.evaluate`).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from deepopt_core.datasets import Dataset, check_dataset_for_model, inspect_dataset, load_dataset
from deepopt_core.errors import DeepOptError, InvalidDataset, InvalidPipeline, PassFailed, reason
from deepopt_core.evaluate.inputs import dataset_feed, synthetic_feed, take
from deepopt_core.evaluate.manifest import write_manifest
from deepopt_core.evaluate.plots import write_tradeoff_plot
from deepopt_core.evaluate.runners import require_cuda
from deepopt_core.formats import FILE_SUFFIXES, inspect_model
from deepopt_core.passes.context import ModelHandle, PassContext
from deepopt_core.planning import PlanError, Track, plan
from deepopt_core.protocol import Progress as ProgressEvent
from deepopt_core.registry import get_pass
from deepopt_core.result import ArtifactResult, Result
from deepopt_core.specs import BenchmarkSettings, ModelInfo, PassSpec

log = logging.getLogger("deepopt.pipeline")
Progress = Callable[[float, str], None]
_SPECS: TypeAdapter[list[Any]] = TypeAdapter(list[PassSpec])  # type: ignore[valid-type]
SAMPLE_ROWS = 2
TRACKS_END = 0.7


class _Progress:
    """Maps progress within a span of the run onto 0..1 and forwards it with the stage name.

    A callback that takes a third argument also receives the latest training metrics (``{"loss": ...}``) of
    the passes that report them; the stage then carries the step and loss too (``distill 120/400 loss 0.4123``).
    `on_event` receives each report as a typed event, with the pass it is in.
    """

    def __init__(self, callback: Progress | None, on_event: Callable[[ProgressEvent], None] | None = None):
        self.callback = callback
        self.on_event = on_event
        self.last = 0.0
        self.takes_metrics = _takes_metrics(callback)

    def at(self, fraction: float, stage: str, metrics: dict[str, Any] | None = None, *,
           pass_index: int | None = None, pass_type: str | None = None) -> None:
        self.last = max(self.last, min(fraction, 1.0))
        if self.on_event is not None:
            self.on_event(ProgressEvent(fraction=round(self.last, 4), stage=stage[:200], pass_index=pass_index,
                                        pass_type=pass_type, metrics=metrics or None))
        if self.callback is None:
            return
        if metrics is not None and self.takes_metrics:
            self.callback(round(self.last, 4), stage, metrics)  # type: ignore[call-arg]
        else:
            self.callback(round(self.last, 4), stage)

    def span(self, start: float, end: float, stage: str, pass_index: int | None = None,
             pass_type: str | None = None) -> Callable[[float], None]:
        return lambda f: self.at(start + (end - start) * f, stage, pass_index=pass_index, pass_type=pass_type)

    def metrics_span(self, start: float, end: float, stage: str, pass_index: int | None = None,
                     pass_type: str | None = None) -> Callable[[float, dict[str, Any]], None]:
        return lambda f, m: self.at(start + (end - start) * f, metrics_stage(stage, m), m, pass_index=pass_index,
                                    pass_type=pass_type)


def _takes_metrics(callback: Any) -> bool:
    import inspect

    if callback is None:
        return False
    try:
        parameters = list(inspect.signature(callback).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def metrics_stage(stage: str, metrics: dict[str, Any]) -> str:
    """The stage with the step and the latest loss, at most 64 characters (``finetune 40/300 loss 0.2130``)."""
    text = stage
    if metrics.get("step") is not None and metrics.get("steps"):
        text += f" {metrics['step']}/{metrics['steps']}"
    if isinstance(metrics.get("loss"), int | float):
        text += f" loss {float(metrics['loss']):.4f}"
    return text[:64]


def _load_data(data: dict[str, Any] | None, info: ModelInfo) -> dict[str, Dataset | None]:
    loaded: dict[str, Dataset | None] = {"calibration": None, "eval": None, "train": None}
    for role, path in (data or {}).items():
        if role not in loaded:
            raise InvalidPipeline(f"unknown dataset role {role!r}; use calibration, eval or train", field="data")
        if not path:
            continue
        problems = check_dataset_for_model(inspect_dataset(path), info)
        if problems:
            raise InvalidDataset(f"{role} dataset: " + "; ".join(problems), field=role)
        loaded[role] = load_dataset(path)
    return loaded


def _sample(info: ModelInfo, data: dict[str, Dataset | None], tokenizer: Any) -> dict[str, np.ndarray]:
    """A few input rows (the fixed batch size of a model that has one) for exports and verification."""
    from deepopt_core.evaluate.benchmark import static_batch

    rows = static_batch(info) or SAMPLE_ROWS
    for role in ("eval", "calibration", "train"):
        dataset = data[role]
        if dataset is not None and (dataset.texts is None or tokenizer is not None):
            return take(dataset_feed(info, dataset, tokenizer=tokenizer, max_rows=rows), 0, rows)
    return synthetic_feed(info, rows, vocab_size=int(info.details.get("vocab_size") or 1000))


def _load_source(path: Path, info: ModelInfo, scratch: Path, hf_folder: Path | None) -> ModelHandle:
    if info.format == "onnx":
        from deepopt_core.formats.onnx_inspect import load_onnx

        return ModelHandle("onnx", load_onnx(path), info, "onnx")
    from deepopt_core.formats import load_torch_model

    module, folder = load_torch_model(hf_folder or path, info.format, scratch)
    return ModelHandle("torch", module, info, info.format, hf_folder=folder)


def _run_pass(index: int, spec: Any, handle: ModelHandle, rep: str, base: PassContext, track: str,
              progress: Callable[[float], None],
              metrics: Callable[[float, dict[str, Any]], None] | None = None,
              outputs: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    impl = get_pass(spec.type).load()
    reuse = getattr(impl, "REUSE_ACROSS_TRACKS", False) and rep == "torch"
    if reuse and ("trained", index) in base.cache:
        # A training pass runs once per job: the other track takes a copy of the same trained model (the passes
        # before it are the same torch passes on both tracks), so that every output holds the same weights.
        model, hf_folder, decided = base.cache[("trained", index)]
        handle.hf_folder = hf_folder
        progress(1.0)
        return copy.deepcopy(model), {**decided, "track": track, "reused_from_track": decided["track"]}
    ctx = PassContext(workdir=base.workdir, info=base.info, sample=base.sample, calibration=base.calibration,
                      eval=base.eval, train=base.train, device=base.device, warnings=base.warnings,
                      hf_folder=handle.hf_folder, on_progress=progress, on_metrics=metrics,
                      tokenizer=base.tokenizer, source=base.source, extra_models=base.extra_models,
                      artifacts=base.artifacts, cache=base.cache, outdir=base.outdir,
                      output_name=base.output_name, outputs=list(outputs or []))
    apply = getattr(impl, f"apply_{rep}", None)
    if apply is None:
        raise PassFailed(f"{spec.type} has no {rep} implementation")
    log.info("pass %d (%s) on %s", index, spec.type, rep)
    model = apply(spec, handle.model, ctx)
    handle.hf_folder = ctx.hf_folder
    decision = {"index": index, "type": spec.type, "track": track, "representation": rep, **ctx.decisions}
    if reuse:
        base.cache[("trained", index)] = (copy.deepcopy(model), ctx.hf_folder, decision)
    return model, decision


def _export(handle: ModelHandle, spec: Any, base: PassContext, index: int | None, track: str,
            progress: Callable[[float], None]) -> dict[str, Any]:
    from deepopt_core.passes.export.impl import apply_torch as export

    ctx = PassContext(workdir=base.workdir, info=base.info, sample=base.sample, warnings=base.warnings,
                      on_progress=progress)
    module = handle.model
    handle.model = export(spec, module, ctx)
    handle.representation = "onnx"
    if handle.source_format == "onnx":  # a model converted from ONNX: its symbolic dimensions must survive
        from deepopt_core.formats.onnx_torch import check_symbolic_batch

        check_symbolic_batch(handle.model, module, base.sample, base.info)
    return {"index": index, "type": "export", "track": track, "representation": "torch", **ctx.decisions}


def _import(handle: ModelHandle, base: PassContext, track: str, progress: Callable[[float], None]) -> dict[str, Any]:
    """Convert the ONNX model to torch for the passes that need it (:mod:`deepopt_core.formats.onnx_torch`)."""
    from deepopt_core.formats.onnx_torch import onnx_to_torch
    from deepopt_core.planning import onnx_import_problem

    # The submit check refuses the same models from the same stored inspection; a job submitted before it existed
    # (or through the library) is refused here, before converting and pruning for nothing.
    problem = onnx_import_problem(base.info.op_types, [t.shape for t in base.info.inputs], base.info.opset)
    if problem is not None:
        raise PassFailed(f"the torch methods cannot run on this model: {problem}")
    progress(0.0)
    handle.model, report = onnx_to_torch(handle.model, base.sample, handle.input_names)
    handle.representation = "torch"
    progress(1.0)
    return {"index": None, "type": "import", "track": track, "representation": "onnx", **report}


def _save(handle: ModelHandle, fmt: str, path: Path, sample: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Write the track's model as `fmt`; an ONNX file is written compactly when that is smaller (the sizes are
    returned for the artifact's benchmark, see :func:`deepopt_core.formats.onnx_sparse.save_onnx_compact`)."""
    names = handle.input_names
    try:
        if fmt == "onnx":
            from deepopt_core.formats.onnx_sparse import save_onnx_compact

            return save_onnx_compact(handle.model, path, sample)
        elif fmt == "torchscript":
            from deepopt_core.formats.torchscript import save_torchscript

            save_torchscript(handle.model, path, sample, names)
        elif fmt == "torch_export":
            from deepopt_core.formats.torch_export import save_torch_export

            symbolic = {t.name: [a for a, d in enumerate(t.shape or [0]) if not isinstance(d, int)]
                        for t in handle.info.inputs}
            save_torch_export(handle.model, path, sample, names, symbolic=symbolic)
        else:
            from deepopt_core.formats.hf import save_hf

            if handle.hf_folder is None:
                raise ValueError("no Hugging Face folder to take the config and tokenizer from")
            save_hf(handle.model, path, handle.hf_folder, name=path.stem)
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise PassFailed(f"saving the {fmt} output failed: {reason(exc)}") from None
    return None


def verify(path: Path, fmt: str, info: ModelInfo, sample: dict[str, np.ndarray], scratch: Path,
           original: Path | None = None) -> ModelInfo:
    """Load `path` from disk, run it on `sample`, and check the outputs; returns the artifact's ModelInfo.

    Args:
        original: the uploaded model; when the output fails, it is run on the same sample, so that a model that
            never ran on these inputs is blamed instead of the output.

    Raises:
        PassFailed: the file does not load, does not run, or gives empty or non-finite outputs.
    """
    from deepopt_core.evaluate.runners import open_runner

    try:
        artifact_info = inspect_model(path, "onnx") if fmt == "onnx" else info.model_copy(update={"format": fmt})
        runner = open_runner(path, fmt, artifact_info, workdir=scratch)
        outputs = runner(sample)
    except Exception as exc:
        why = reason(exc)
        own = _original_failure(original, info, sample, scratch) if original is not None else None
        if own is not None:
            raise PassFailed(_does_not_run(info, sample, own)) from None
        raise PassFailed(f"the {fmt} output does not load and run: {why}") from None
    if not outputs or any(o.size == 0 for o in outputs):
        raise PassFailed(f"the {fmt} output returned no values")
    if any(o.dtype.kind == "f" and not np.isfinite(o).all() for o in outputs):
        raise PassFailed(f"the {fmt} output returns NaN or infinite values")
    return artifact_info


def _original_failure(original: Path, info: ModelInfo, sample: dict[str, np.ndarray], scratch: Path) -> str | None:
    """Why the uploaded model itself fails on `sample`, or None when it runs."""
    from deepopt_core.evaluate.runners import open_runner

    try:
        open_runner(original, info.format, info, workdir=scratch)(sample)
    except Exception as exc:
        return reason(exc, 300)
    return None


def _does_not_run(info: ModelInfo, sample: dict[str, np.ndarray], reason: str) -> str:
    """The failure of a job whose uploaded model does not run on the job's inputs (an export that fixed a
    dimension its inputs declare symbolic: a legacy torch.onnx.export without dynamic_axes for it)."""
    declared = {t.name: t.shape for t in info.inputs}
    shapes = ", ".join(f"{name} {list(value.shape)} (declared {declared.get(name)})" for name, value in sample.items())
    return (f"the uploaded model itself does not run on the job's inputs ({shapes}): {reason}. It was probably "
            "exported for one input shape (torch.onnx.export without dynamic_axes, or dynamic_shapes, for the "
            "dimension that differs); re-export it with dynamic axes for every dimension the datasets vary, or give "
            "datasets of the shapes it was exported with")


def _run_track(track: Track, specs: list[Any], model: Path, base: PassContext, hf_folder: Path | None,
               scratch: Path, progress: _Progress, start: float,
               end: float) -> tuple[ModelHandle, list[dict[str, Any]]]:
    handle = _load_source(model, base.info, scratch, hf_folder)
    steps = dict(track.steps)
    export_spec = next((s for s in reversed(specs) if s.type == "export"), None)
    units = len(track.steps) + (track.export_before is not None) + (track.import_before is not None) + 1
    width = (end - start) / units
    done = 0
    decisions: list[dict[str, Any]] = []
    for index in range(len(specs) + 1):
        if track.import_before == index:
            span = progress.span(start + done * width, start + (done + 1) * width, "import")
            decisions.append(_import(handle, base, track.representation, span))
            done += 1
        if track.export_before == index:
            explicit = index if index < len(specs) and specs[index].type == "export" else None
            span = progress.span(start + done * width, start + (done + 1) * width, "export", explicit, "export")
            decisions.append(_export(handle, export_spec, base, explicit, track.representation, span))
            done += 1
        if index in steps:
            spec = specs[index]
            lo, hi = start + done * width, start + (done + 1) * width
            span = progress.span(lo, hi, spec.type, index, spec.type)
            span(0.0)
            handle.model, decision = _run_pass(index, spec, handle, steps[index], base, track.representation, span,
                                               progress.metrics_span(lo, hi, spec.type, index, spec.type),
                                               track.outputs)
            handle.quantized = handle.quantized or spec.type == "quantize"
            decisions.append(decision)
            done += 1
    return handle, decisions


def optimize(model: str | Path, passes: list[Any], data: dict[str, Any] | None = None,
             outputs: list[str] | None = None, *, workdir: str | Path, device: str = "cpu",
             benchmark: dict[str, Any] | BenchmarkSettings | None = None, on_progress: Progress | None = None,
             model_info: ModelInfo | dict[str, Any] | None = None, model_name: str | None = None,
             extra_models: dict[str, str | Path] | None = None,
             on_event: Callable[[ProgressEvent], None] | None = None) -> Result:
    """Optimize `model` with `passes`, save `outputs` into `workdir`, verify and benchmark them.

    Args:
        model: path of the model file (ONNX, TorchScript, .pt2, Hugging Face .zip/.tar.gz or folder).
        passes: pass specs (dicts or configs), validated against the registered passes.
        data: dataset paths by role: ``{"calibration": ..., "eval": ..., "train": ...}`` (.npz or .jsonl).
        outputs: output formats; default: the source format (``onnx`` when an export pass is present).
        workdir: folder for the outputs (created).
        device: where the original and the outputs are benchmarked: ``"cpu"``, or ``"cuda"`` (ONNX Runtime's
            CUDA provider, torch on the GPU); the passes themselves are offline transforms and run on the CPU.
        benchmark: ``BenchmarkSettings`` or its dict; defaults when None.
        on_progress: called with (fraction 0..1, stage name); a callback with a third parameter also gets the
            latest metrics of training passes (``{"loss", "step", "steps", "epoch"}``) with their progress.
        model_info: the model's stored inspection (skips inspecting again).
        model_name: base of the output file names (default: the model file's stem).
        extra_models: other uploaded models that passes name by id (a distillation student), id -> file path.
        on_event: receives the same reports as typed :class:`deepopt_core.protocol.Progress` events, which also
            name the pass each is in (``pass_index``, ``pass_type``) and carry the metrics.

    Returns:
        The artifacts, the benchmarks (original first, ``artifact_index=None``), per-pass decisions, warnings.

    Raises:
        InvalidPipeline: specs that do not validate or a plan that cannot run.
        InvalidDataset, InvalidModel, UnsafeContent, UnsupportedFormat: bad inputs.
        PassFailed: a pass, a save or a verification failed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model = Path(model)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(on_progress, on_event)
    progress.at(0.0, "loading")
    try:
        specs = _SPECS.validate_python(list(passes))
        settings = benchmark if isinstance(benchmark, BenchmarkSettings) else BenchmarkSettings.model_validate(
            benchmark or {})
    except ValidationError as exc:
        raise InvalidPipeline(f"invalid pipeline: {exc.errors()[0]['msg']} at "
                              f"{'.'.join(map(str, exc.errors()[0]['loc']))}", field="passes") from None
    if device not in ("cpu", "cuda"):
        raise InvalidPipeline(f"unknown device {device!r}; use 'cpu' or 'cuda'", field="device")
    if device == "cuda":
        require_cuda()
    info = ModelInfo.model_validate(model_info) if model_info is not None else inspect_model(model)
    try:
        tracks = plan(info.format, specs, outputs, info.details)
    except PlanError as exc:
        raise InvalidPipeline(str(exc), field="outputs") from None
    data_sets = _load_data(data, info)
    scratch = workdir / ".work"
    scratch.mkdir(exist_ok=True)
    name = model_name or model.name.split(".")[0] or "model"
    result = Result()
    storage: dict[int, dict[str, Any]] = {}  # artifact index -> how its ONNX file is stored, and the sizes
    try:
        hf_folder, tokenizer = None, None
        if info.format == "hf":
            from deepopt_core.formats.hf import load_tokenizer, unpack

            hf_folder = unpack(model, scratch / "source")
            tokenizer = load_tokenizer(hf_folder)
        sample = _sample(info, data_sets, tokenizer)
        base = PassContext(workdir=scratch, info=info, sample=sample, device=device, warnings=result.warnings,
                           hf_folder=hf_folder, calibration=data_sets["calibration"], eval=data_sets["eval"],
                           train=data_sets["train"], tokenizer=tokenizer, source=model,
                           extra_models={k: Path(v) for k, v in (extra_models or {}).items()}, outdir=workdir,
                           output_name=name)
        progress.at(0.05, "loading")
        width = (TRACKS_END - 0.05) / len(tracks)
        for number, track in enumerate(tracks):
            start = 0.05 + number * width
            handle, decisions = _run_track(track, specs, model, base, hf_folder, scratch, progress, start,
                                           start + 0.8 * width)
            result.decisions.extend(decisions)
            for fmt in track.outputs:
                progress.at(start + 0.8 * width, "saving")
                filename = f"{name}-optimized{FILE_SUFFIXES[fmt]}"
                path = (workdir / filename).resolve()
                stored = _save(handle, fmt, path, sample)
                progress.at(start + 0.9 * width, "verifying")
                verify(path, fmt, info, sample, scratch, original=model)
                if stored is not None:
                    storage[len(result.artifacts)] = stored
                result.artifacts.append(ArtifactResult(path=str(path), kind="model", format=fmt, filename=filename))
        result.artifacts.extend(base.artifacts)  # files the passes wrote besides the model (an adapter)
        _benchmark(model, info, result, data_sets, tokenizer, settings, scratch, progress, device)
        for bench in result.benchmarks:
            if bench.artifact_index in storage:
                bench.metrics["storage"] = storage[bench.artifact_index]
        for plot in write_tradeoff_plot(result.benchmarks, result.artifacts, workdir, name):
            result.artifacts.append(ArtifactResult(path=str(plot.resolve()), kind="plot",
                                                   format=plot.suffix.lstrip("."), filename=plot.name))
        manifest = write_manifest(
            workdir / f"{name}-manifest.json", model=model, model_format=info.format, specs=specs,
            outputs=[fmt for track in tracks for fmt in track.outputs], data=data, device=device,
            benchmark=settings, result=result,
        )
        result.artifacts.append(
            ArtifactResult(path=str(manifest.resolve()), kind="report", format="json", filename=manifest.name)
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress.at(1.0, "done")
    return result


def _benchmark(model: Path, info: ModelInfo, result: Result, data_sets: dict[str, Dataset | None], tokenizer: Any,
               settings: BenchmarkSettings, scratch: Path, progress: _Progress, device: str = "cpu") -> None:
    from deepopt_core.evaluate.benchmark import Subject, benchmark_models, eval_inputs

    progress.at(TRACKS_END, "benchmark")
    try:
        inputs = eval_inputs(info, data_sets["eval"], data_sets["calibration"], tokenizer)
        original = Subject(None, model, info.format, info)
        subjects = [Subject(i, Path(a.path), a.format, info.model_copy(update={"format": a.format}))
                    for i, a in enumerate(result.artifacts) if a.kind == "model"]
        for subject in subjects:
            if subject.format == "onnx":
                subject.info = inspect_model(subject.path, "onnx")
        result.benchmarks.extend(benchmark_models(
            original, subjects, inputs, settings, device=device, workdir=scratch, warnings=result.warnings,
            on_progress=progress.span(TRACKS_END, 0.99, "benchmark"),
        ))  # fmt: skip
    except DeepOptError:
        raise
    except Exception as exc:
        raise PassFailed(f"benchmark failed: {reason(exc)}") from exc
    _note_quantization(result)
    _note_auto(result)


def _note_auto(result: Result) -> None:
    """An artifact of a track with an `auto` pass says whether it meets the accuracy bound and which trial it is
    (the trials themselves are in the decisions)."""
    for bench in result.benchmarks:
        if bench.artifact_index is None:
            continue
        track = "onnx" if result.artifacts[bench.artifact_index].format == "onnx" else "torch"
        for d in result.decisions:
            if d.get("type") == "auto" and d.get("track") == track:
                bench.metrics["met_bound"] = d.get("met_bound")
                bench.metrics["auto"] = {k: d.get(k) for k in (
                    "objective", "metric", "max_accuracy_drop", "chosen", "chosen_label", "trials_run",
                    "trials_skipped", "stopped", "seconds", "pareto_front")}


def _note_quantization(result: Result) -> None:
    """Each artifact's benchmark says what the quantize passes of its track left in float, and why (the
    accuracy guard's fallbacks included), next to the quality it measured."""
    for bench in result.benchmarks:
        if bench.artifact_index is None:
            continue
        track = "onnx" if result.artifacts[bench.artifact_index].format == "onnx" else "torch"
        notes = []
        for d in result.decisions:
            if d.get("type") != "quantize" or d.get("track") != track:
                continue
            kept = d.get("kept_float") or d.get("kept_float32") or []
            guard = d.get("guard") or {}
            notes.append({
                "pass": d.get("index"), "mode": d.get("mode"),
                "float": [{"name": k.get("node") or k.get("layer") or k.get("op_type"), "reason": k.get("reason")}
                          for k in kept],
                "guard": {k: guard.get(k) for k in ("metric_float", "metric_quantized", "drop", "max_drop",
                                                    "within_max_drop", "fallback_nodes")} if guard else None,
            })  # fmt: skip
        if notes:
            bench.metrics["quantization"] = notes
