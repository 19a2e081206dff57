"""What a pass works on (:class:`ModelHandle`) and with (:class:`PassContext`). No heavy imports.

A pass implementation module defines ``apply_onnx(spec, model, ctx)`` and/or ``apply_torch(spec, model, ctx)``:

* ``apply_onnx`` takes an ``onnx.ModelProto`` (or a path to an .onnx file) and returns the new ``ModelProto``;
* ``apply_torch`` takes a torch module that is called with the model inputs positionally (a ``ScriptModule``, a
  ``torch.export`` ``GraphModule`` or a Hugging Face wrapper) and returns the new module (the ``export`` pass
  returns an ``onnx.ModelProto``).

Both record what they decided in ``ctx.decisions`` (JSON-serialisable), may add ``ctx.warnings``, report progress
within the pass through ``ctx.progress(fraction)``, and raise :class:`deepopt_core.errors.PassFailed` when the
model cannot be processed.
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

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.info.inputs]

    def progress(self, fraction: float) -> None:
        """Report progress within the pass (clamped to 0..1)."""
        if self.on_progress is not None:
            self.on_progress(min(max(float(fraction), 0.0), 1.0))

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)
