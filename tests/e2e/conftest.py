"""The digits MLP in every format, trained once per session, with its held-out split and accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class Digits:
    onnx: Path
    torchscript: Path
    torch_export: Path
    eval_npz: Path
    calibration_npz: Path
    test_inputs: np.ndarray
    test_labels: np.ndarray
    test_accuracy: float


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    import onnxruntime as ort

    from examples.digits import build_digits_models

    paths = build_digits_models(tmp_path_factory.mktemp("digits"))
    held_out = np.load(paths["eval"])
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": held_out["input"]})[0]
    accuracy = float((logits.argmax(axis=1) == held_out["labels"]).mean())
    assert accuracy > 0.9  # a real, trained model
    return Digits(
        onnx=paths["onnx"], torchscript=paths["torchscript"], torch_export=paths["torch_export"],
        eval_npz=paths["eval"], calibration_npz=paths["calibration"], test_inputs=held_out["input"],
        test_labels=held_out["labels"], test_accuracy=accuracy,
    )
