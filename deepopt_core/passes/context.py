"""What a pass works on (:class:`ModelHandle`) and with (:class:`PassContext`). No heavy imports.

A pass implementation module defines ``apply_onnx(spec, model, ctx)`` and/or ``apply_torch(spec, model, ctx)``:

* ``apply_onnx`` takes an ``onnx.ModelProto`` (or a path to an .onnx file) and returns the new ``ModelProto``;
* ``apply_torch`` takes a torch module that is called with the model inputs positionally (a ``ScriptModule``, a
  ``torch.export`` ``GraphModule`` or a Hugging Face wrapper) and returns the new module (the ``export`` pass
  returns an ``onnx.ModelProto``).

Both record what they decided in ``ctx.decisions`` (JSON-serialisable), may add ``ctx.warnings``, report progress
within the pass through ``ctx.progress(fraction)`` (training passes add their latest metrics, such as the loss:
``ctx.progress(fraction, {"loss": 0.41, "step": 120})``), and raise :class:`deepopt_core.errors.PassFailed` when
the model cannot be processed. A pass may also write extra files (an adapter) into ``ctx.artifacts``, replace the
Hugging Face folder its output is saved with (``ctx.hf_folder``, when it changes the config), and load the
uploaded original (``ctx.load_original()``, a teacher) or another uploaded model (``ctx.load_model(model_id)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from deepopt_core.datasets import Dataset
from deepopt_core.specs import ModelInfo

log = logging.getLogger("deepopt.passes")

Representation = Literal["onnx", "torch"]


@dataclass
class ModelHandle:
    """The model between passes.

    Attributes:
        representation: ``"onnx"`` (``model`` is an ``onnx.ModelProto``) or ``"torch"`` (an ``nn.Module``).
        model: the model itself.
        info: facts about the source model (input names, dtypes and shapes are kept through all passes).
        source_format: the format of the uploaded model.
        hf_folder: the unpacked Hugging Face folder (config, tokenizer), for HF sources.
        quantized: a quantize pass has run.
    """

    representation: Representation
    model: Any
    info: ModelInfo
    source_format: str
    hf_folder: Path | None = None
    quantized: bool = False

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.info.inputs]


@dataclass
class PassContext:
    """Everything a pass may use besides its config and the model.

    Attributes:
        workdir: a folder the pass may write scratch files into.
        info: the source model's facts.
        sample: one small batch of model inputs by name (for exports and checks).
        calibration, eval, train: the job's datasets, loaded, or None.
        device: ``"cpu"`` or ``"cuda"``.
        decisions: what the pass decided (filled by the pass; one dict per pass run).
        warnings: notes for the user.
        hf_folder: the unpacked Hugging Face folder, for HF sources.
        on_progress: receives the fraction (0..1) of this pass that is done.
        on_metrics: receives the fraction and the latest training metrics (``{"loss", "step", "steps"}``).
        tokenizer: the Hugging Face model's tokenizer, when it has one.
        source: the uploaded model file (see :meth:`load_original`).
        extra_models: other uploaded models named in the run request, model id -> path (:meth:`load_model`).
        artifacts: ``ArtifactResult`` entries of extra files the pass wrote into ``outdir`` (an adapter).
        cache: shared by the passes of all tracks of one run.
        outdir: the run's output folder, for extra artifacts (``ctx.workdir`` is deleted after the run).
        output_name: the base of output file names.
        outputs: the output formats of the track this pass runs in (``["hf"]``, ``["onnx"]``).
    """

    workdir: Path
    info: ModelInfo
    sample: dict[str, np.ndarray]
    calibration: Dataset | None = None
    eval: Dataset | None = None
    train: Dataset | None = None
    device: str = "cpu"
    decisions: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    hf_folder: Path | None = None
    on_progress: Callable[[float], None] | None = None
    on_metrics: Callable[[float, dict[str, Any]], None] | None = None
    tokenizer: Any = None
    source: Path | None = None
    extra_models: dict[str, Path] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict)
    outdir: Path | None = None
    output_name: str = "model"
    outputs: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.info.inputs]

    def progress(self, fraction: float, metrics: dict[str, Any] | None = None) -> None:
        """Report progress within the pass (clamped to 0..1), with the latest metrics (``{"loss": ...}``) if any."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        if metrics and self.on_metrics is not None:
            self.on_metrics(fraction, metrics)
        elif self.on_progress is not None:
            self.on_progress(fraction)

    def load_original(self) -> ModelHandle:
        """A fresh copy of the uploaded model (the teacher of a distillation), as ONNX or torch.

        Raises:
            PassFailed: the run has no source model path.
        """
        if self.source is None:
            from deepopt_core.errors import PassFailed

            raise PassFailed("the original model is not available to this pass")
        return load_handle(self.source, self.info, self.workdir)

    def load_model(self, model_id: str) -> ModelHandle:
        """Another uploaded model, named by id in the run request's ``extra_models``.

        Raises:
            PassFailed: the run request does not carry that model.
        """
        path = self.extra_models.get(model_id)
        if path is None:
            from deepopt_core.errors import PassFailed

            raise PassFailed(f"model {model_id!r} was not passed to this run (extra_models)")
        from deepopt_core.formats import inspect_model

        return load_handle(Path(path), inspect_model(path), self.workdir)

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)


def load_handle(path: Path, info: ModelInfo, workdir: Path) -> ModelHandle:
    """Load a model file as a :class:`ModelHandle` (ONNX ``ModelProto`` or a torch module taking inputs
    positionally); Hugging Face archives are unpacked under `workdir`."""
    if info.format == "onnx":
        from deepopt_core.formats.onnx_inspect import load_onnx

        return ModelHandle("onnx", load_onnx(path), info, "onnx")
    import tempfile

    from deepopt_core.formats import load_torch_model

    scratch = Path(tempfile.mkdtemp(prefix="model-", dir=workdir))
    module, folder = load_torch_model(path, info.format, scratch)
    return ModelHandle("torch", module, info, info.format, hf_folder=folder)
