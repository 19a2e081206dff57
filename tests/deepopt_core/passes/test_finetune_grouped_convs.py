"""LoRA on a BN + depthwise CNN program (issue 15): a grouped conv PEFT cannot adapt stays frozen and is listed in
the decisions instead of failing the job after acceptance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepopt_core import optimize
from tests.deepopt_core.passes.test_prune_grouped_convs import depthwise_cnn
from tests.deepopt_core.passes.test_prune_structured_cnns import BENCH, _one_thread, _program, _random_statistics

pytestmark = pytest.mark.timeout(600)
__all__ = ["_one_thread"]  # the module's one-thread fixture, autouse


def test_lora_leaves_depthwise_convs_it_cannot_adapt_frozen_and_lists_them(tmp_path: Path) -> None:
    """PEFT adapts a grouped conv only when the rank is a multiple of its groups: a depthwise conv with more
    channels than the rank stays frozen and is listed, and the job goes on (it failed after acceptance)."""
    path = tmp_path / "model.pt2"
    torch.export.save(_program(_random_statistics(depthwise_cnn()), 16), str(path))
    from deepopt_core.formats import inspect_model

    name = inspect_model(path).inputs[0].name
    rng = np.random.default_rng(0)
    train = tmp_path / "train.npz"
    np.savez(train, **{name: rng.standard_normal((16, 3, 16, 16)).astype(np.float32)},
             labels=rng.integers(0, 10, 16))
    spec = {"type": "finetune", "method": "lora", "r": 4, "max_steps": 2, "batch_size": 8, "validation_split": 0.0}
    result = optimize(path, [spec], {"train": train}, ["onnx"], workdir=tmp_path / "run", benchmark=BENCH)
    decision = result.decisions[0]
    assert list(decision["left_frozen"]) == ["3"] and "groups=16" in decision["left_frozen"]["3"]
    assert "3" not in decision["target_modules"] and {"0", "6"} <= set(decision["target_modules"])
    assert [a for a in result.artifacts if a.format == "onnx"]


def test_lora_on_a_transformers_mobilenet_is_refused_at_submit(tmp_path: Path) -> None:
    """transformers' MobileNetV2 pads TF-style by reading each conv's stride, which PEFT's LoRA conv does not
    expose: the job failed after acceptance ("'Conv2d' object has no attribute 'stride'", a matrix cell), and with
    those convs frozen there is nothing left to adapt but the head. It is a 422 naming the method; a job run
    without the submit check fails with a clear message instead of crashing."""
    import shutil

    from deepopt_core.errors import PassFailed
    from deepopt_core.formats import inspect_model
    from deepopt_core.passes.base import SubmitContext, check_pass
    from deepopt_core.passes.finetune.config import LoraFinetuneConfig
    from tests.fixtures.hf_architectures import save_architecture

    folder = save_architecture("mobilenet_v2", tmp_path / "mobilenet", "MobileNetV2ForImageClassification")
    source = Path(shutil.make_archive(str(tmp_path / "mobilenet"), "zip", folder.parent, folder.name))
    spec = {"type": "finetune", "method": "lora", "r": 4, "max_steps": 2, "batch_size": 8, "validation_split": 0.0}
    info = inspect_model(source).model_dump()
    train_info = {"format": "npz", "num_rows": 16, "has_labels": True, "columns": {}}
    problems = dict(check_pass(LoraFinetuneConfig.model_validate(spec), SubmitContext(model=info, train=train_info)))
    assert "stride" in problems[("method",)] and "'full'" in problems[("method",)]
    rng = np.random.default_rng(0)
    train = tmp_path / "train.npz"
    np.savez(train, pixel_values=rng.standard_normal((16, 3, 32, 32)).astype(np.float32),
             labels=rng.integers(0, 2, 16))
    with pytest.raises(PassFailed, match="LoRA can adapt none of the layers"):
        optimize(source, [spec], {"train": train}, ["onnx"], workdir=tmp_path / "run", benchmark=BENCH)
