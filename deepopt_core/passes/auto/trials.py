"""The in-process trial runner of the `auto` pass: applies a recipe with the registered passes, saves it, and
measures it the way every job's benchmark does (:func:`deepopt_core.evaluate.benchmark.measure`).

A runner can also be packed into a *bundle* (:meth:`OnnxTrialRunner.write_bundle`): the model, the eval rows as
model inputs, calibration rows, a sample batch, the original's outputs and the timing settings, so that a runner
built from it on another machine (:meth:`OnnxTrialRunner.from_bundle`) measures a recipe the same way, with no
tokenizer, no uploaded files and no job behind it.

Recipe steps that only run on PyTorch (structured pruning with `fine_tune`, `distill` into a narrower student) run
on the ONNX model converted to torch and exported back, as the pipeline does for an ONNX upload
(:mod:`deepopt_core.formats.onnx_torch`, the `import` and `export` steps): a model that does not convert, or whose
export would not take other batch sizes (BERT-family graphs), fails the trial, and the search carries on. They
train on the job's train dataset, which a bundle does not carry: such recipes are local-only
(:func:`needs_training`), run by the job's own process, never on another worker.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import TypeAdapter, ValidationError

from deepopt_core.datasets import LABELS, Dataset, load_dataset
from deepopt_core.errors import DeepOptError, PassFailed
from deepopt_core.evaluate.benchmark import EvalInputs, Subject, common_rows, measure
from deepopt_core.evaluate.inputs import dataset_feed, take
from deepopt_core.formats import inspect_model
from deepopt_core.formats.onnx import save_onnx
from deepopt_core.passes.auto.search import Measurement, TrialFailed
from deepopt_core.passes.context import PassContext
from deepopt_core.planning import _representations
from deepopt_core.registry import get_pass
from deepopt_core.specs import BenchmarkSettings, ModelInfo, PassSpec

log = logging.getLogger("deepopt.passes.auto")
_SPECS: TypeAdapter[list[Any]] = TypeAdapter(list[PassSpec])  # type: ignore[valid-type]
TIMING_TARGET_S = 0.5  # timed runs per trial: about this long at the baseline's speed
MIN_RUNS, MAX_RUNS = 10, 300
RETIME_ROUNDS = 5
# Calibration rows a bundle carries: more than any recipe of the search uses (static quantization takes 64).
BUNDLE_CALIBRATION_ROWS = 1024
# What a trial's decisions keep of each pass's decisions.
SUMMARY_KEYS = ("mode", "method", "quantized_nodes", "sparsity", "params_before", "params_after",
                "student_parameters", "teacher_parameters")


class OnnxTrialRunner:
    """Runs recipes on one ONNX model in this process; every trial's model is kept on disk until the end."""

    def __init__(self, model: onnx.ModelProto, ctx: PassContext, *, metric: str, batch_size: int,
                 num_samples: int):
        if ctx.eval is None:
            raise TrialFailed("auto needs the job's eval dataset")
        self.model = model
        self.ctx = ctx
        self.metric = metric
        self.batch_size = batch_size
        self.folder = Path(ctx.workdir) / "auto"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        feed = dataset_feed(ctx.info, ctx.eval, tokenizer=ctx.tokenizer, max_rows=num_samples)
        labels = ctx.eval.labels[:num_samples] if ctx.eval.labels is not None else None
        self.inputs = EvalInputs(feed, "eval", labels if metric == "accuracy" else None)
        self.num_samples = num_samples
        self.paths: dict[int, Path] = {}
        self.infos: dict[int, ModelInfo] = {}
        self.reference: np.ndarray | None = None
        self.runs = 20
        self.torch_problem: str | None = None  # why the model cannot go through torch (checked once), "" if it can

    def _settings(self) -> BenchmarkSettings:
        return BenchmarkSettings(batch_sizes=[self.batch_size], runs=self.runs, warmup=3)

    def _measure(self, number: int) -> Measurement:
        subject = Subject(None if number == 0 else number, self.paths[number], "onnx", self.infos[number])
        inputs = common_rows(self.inputs, [subject])
        result, outputs = measure(subject, inputs, self._settings(), self.reference, workdir=self.folder,
                                  warnings=[])
        if number == 0:
            self.reference = outputs
        metrics = result.metrics
        if self.metric == "accuracy":
            quality = metrics.get("accuracy")
        else:
            quality = 1.0 if number == 0 else metrics.get("fidelity_cosine")
        if quality is None:
            raise TrialFailed(f"the {self.metric} of the model could not be measured (outputs not comparable)")
        latency = float(result.latency_ms_p50 or 0.0)
        return Measurement(float(quality), latency, result.size_bytes,
                           {"fidelity_cosine": metrics.get("fidelity_cosine"), "sparsity": result.sparsity})

    def baseline(self) -> Measurement:
        path = self.folder / "baseline.onnx"
        save_onnx(self.model, path)
        self.paths[0], self.infos[0] = path, inspect_model(path, "onnx")
        first = self._measure(0)
        # As many timed runs as take about TIMING_TARGET_S at the original's speed (tiny models need many).
        per_run_s = max(first.latency_ms, 1e-3) / 1000
        self.runs = int(min(MAX_RUNS, max(MIN_RUNS, TIMING_TARGET_S / per_run_s)))
        return self._measure(0) if self.runs != 20 else first

    def run(self, number: int, recipe: list[dict[str, Any]]) -> Measurement:
        try:
            specs = _SPECS.validate_python(recipe)
        except ValidationError as exc:
            raise TrialFailed(f"invalid recipe: {exc.errors()[0]['msg']}") from None
        model: Any = onnx.ModelProto()
        model.CopyFrom(self.model)
        summary: list[dict[str, Any]] = []
        scratch = self.folder / f"trial-{number}"
        scratch.mkdir()
        try:
            for index, spec in enumerate(specs):
                on_torch = "onnx" not in _representations(spec)
                if on_torch and isinstance(model, onnx.ModelProto):
                    model = self._to_torch(model, scratch)
                ctx = self._context(scratch, on_torch)
                impl = get_pass(spec.type).load()
                model = (impl.apply_torch if on_torch else impl.apply_onnx)(spec, model, ctx)
                kept: dict[str, Any] = {k: ctx.decisions[k] for k in SUMMARY_KEYS if k in ctx.decisions}
                summary.append({"type": spec.type, **kept})
                following = specs[index + 1] if index + 1 < len(specs) else None
                if on_torch and (following is None or "onnx" in _representations(following)):
                    model = self._to_onnx(model, scratch)
            path = self.folder / f"trial-{number}.onnx"
            save_onnx(model, path)
            self.paths[number], self.infos[number] = path, inspect_model(path, "onnx")
            result = self._measure(number)
        except (DeepOptError, PassFailed) as exc:
            raise TrialFailed(str(exc)) from None
        except Exception as exc:  # a pass or ONNX Runtime refusing the model is a failed trial, not a failed job
            raise TrialFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result.details["passes"] = summary
        return result

    def _context(self, scratch: Path, on_torch: bool) -> PassContext:
        """A pass's context in a trial. A torch step also gets the train data and, as its `source` (a
        distillation's teacher), the model the search started from, as ONNX."""
        info = self.ctx.info
        if on_torch and info.format != "onnx":
            info = info.model_copy(update={"format": "onnx"})
        return PassContext(
            workdir=scratch, info=info, sample=self.ctx.sample, calibration=self.ctx.calibration or self.ctx.eval,
            eval=self.ctx.eval, train=self.ctx.train, device="cpu", warnings=[], hf_folder=self.ctx.hf_folder,
            tokenizer=self.ctx.tokenizer, source=self.paths[0] if on_torch else self.ctx.source,
        )  # fmt: skip

    def _to_torch(self, model: onnx.ModelProto, scratch: Path) -> Any:
        """The ONNX model as torch (:func:`deepopt_core.formats.onnx_torch.onnx_to_torch`). The first time, the
        unchanged module is also exported back and checked on another batch size, so that a model the pipeline
        could not bring back (a BERT-family graph) fails its trials at once instead of after training."""
        from deepopt_core.formats.onnx_torch import onnx_to_torch

        if self.torch_problem:
            raise TrialFailed(self.torch_problem)
        try:
            module, _ = onnx_to_torch(model, self.ctx.sample, self.ctx.input_names)
            if self.torch_problem is None:
                self._to_onnx(module, scratch)
        except (DeepOptError, PassFailed) as exc:
            self.torch_problem = f"the model cannot go through PyTorch for this recipe: {exc}"
            raise TrialFailed(self.torch_problem) from None
        self.torch_problem = ""
        return module

    def _to_onnx(self, module: Any, scratch: Path) -> onnx.ModelProto:
        """Export a module converted from ONNX back, as the pipeline's `export` step does after `import`."""
        from deepopt_core.formats.onnx_torch import check_symbolic_batch
        from deepopt_core.passes.export.impl import apply_torch as export

        ctx = self._context(scratch, True)
        exported = export(None, module, ctx)
        check_symbolic_batch(exported, module, self.ctx.sample, self.ctx.info)
        return exported

    def retime(self, numbers: list[int]) -> dict[int, float]:
        from deepopt_core.evaluate.runners import open_runner

        keys = [0, *numbers]
        runners = {k: open_runner(self.paths[k], "onnx", self.infos[k], workdir=self.folder) for k in keys}
        try:
            batch = take(self.inputs.feed, 0, self.batch_size)
            times: dict[int, list[float]] = {k: [] for k in keys}
            for runner in runners.values():
                for _ in range(3):
                    runner(batch)
            runs = max(1, self.runs // RETIME_ROUNDS)
            for _ in range(RETIME_ROUNDS):
                for key in keys:
                    for _ in range(runs):
                        began = time.perf_counter()
                        runners[key](batch)
                        times[key].append(time.perf_counter() - began)
        finally:
            for runner in runners.values():
                runner.close()
        return {k: float(np.median(v) * 1000) for k, v in times.items()}

    def adopt(self, number: int, path: Path) -> None:
        """Take trial `number`'s model from a file measured elsewhere (for :meth:`retime` and :meth:`model_of`)."""
        self.paths[number], self.infos[number] = path, inspect_model(path, "onnx")

    def write_bundle(self, folder: Path) -> Path:
        """Pack what a trial needs on another machine into `folder` (after :meth:`baseline`); returns it."""
        assert self.ctx.eval is not None and 0 in self.paths
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.paths[0], folder / "baseline.onnx")
        labels = self.ctx.eval.labels
        _save_arrays(folder / "eval.npz", {**self.inputs.feed,
                                           **({LABELS: labels[:self.num_samples]} if labels is not None else {})})
        calibration = self.ctx.calibration or self.ctx.eval
        _save_arrays(folder / "calibration.npz", dataset_feed(self.ctx.info, calibration, tokenizer=self.ctx.tokenizer,
                                                              max_rows=BUNDLE_CALIBRATION_ROWS))
        _save_arrays(folder / "sample.npz", self.ctx.sample)
        if self.reference is not None:
            np.save(folder / "reference.npy", self.reference, allow_pickle=False)
        (folder / "bundle.json").write_text(json.dumps({
            "info": self.ctx.info.model_dump(mode="json"), "metric": self.metric, "batch_size": self.batch_size,
            "num_samples": self.num_samples, "runs": self.runs,
        }))  # fmt: skip
        return folder

    @classmethod
    def from_bundle(cls, folder: Path, workdir: Path) -> OnnxTrialRunner:
        """A runner of the bundle in `folder` (see :meth:`write_bundle`), ready for :meth:`run`."""
        from deepopt_core.formats.onnx_inspect import load_onnx

        meta = json.loads((folder / "bundle.json").read_text())
        info = ModelInfo.model_validate(meta["info"])
        with np.load(folder / "sample.npz", allow_pickle=False) as sample:
            batch = {name: sample[name] for name in sample.files}
        evaluation = load_dataset(folder / "eval.npz")
        calibration: Dataset = load_dataset(folder / "calibration.npz")
        ctx = PassContext(workdir=workdir, info=info, sample=batch, calibration=calibration, eval=evaluation)
        runner = cls(load_onnx(folder / "baseline.onnx"), ctx, metric=meta["metric"], batch_size=meta["batch_size"],
                     num_samples=meta["num_samples"])
        reference = folder / "reference.npy"
        runner.reference = np.load(reference, allow_pickle=False) if reference.exists() else None
        runner.runs = int(meta["runs"])
        return runner

    def model_of(self, number: int) -> onnx.ModelProto:
        from deepopt_core.formats.onnx_inspect import load_onnx

        return load_onnx(self.paths[number])

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **arrays)  # type: ignore[arg-type]


def needs_training(recipe: list[dict[str, Any]]) -> bool:
    """Whether a recipe trains on the job's train dataset (`distill`, a `fine_tune` recovery): such a recipe is
    local-only, since a bundle carries no train data."""
    return any(step.get("type") == "distill" or step.get("fine_tune") for step in recipe)


def has_matmul(model: onnx.ModelProto) -> bool:
    return any(node.op_type in ("MatMul", "Gemm") for node in model.graph.node)
