"""Second-order pruning (`obs` with `hessian` fisher and inputs, N:M with `selection: obs`) on models with
depthwise and grouped convolutions (issue 15): a plain torch BN + depthwise CNN and transformers' MobileNetV2Model
and ConvNextModel from small configs, exported with torch.export and run through `deepopt_core.optimize`. Grouped
convolutions are pruned group by group; a layer second-order pruning cannot take (circular padding) stays dense
(N:M: chosen by magnitude) and is listed in the decisions instead of failing the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deepopt_core import optimize
from deepopt_core.passes.prune import layerwise, nm, obs
from deepopt_core.passes.prune import sparsity as sp

pytestmark = pytest.mark.timeout(600)
BENCH = {"batch_sizes": [2], "runs": 1, "warmup": 0, "threads": 1}
SPECS = {
    "fisher": {"type": "prune", "method": "obs", "sparsity": 0.5, "num_gradients": 16},
    "inputs": {"type": "prune", "method": "obs", "sparsity": 0.5, "hessian": "inputs", "num_gradients": 16},
    "nm_obs": {"type": "prune", "method": "nm", "selection": "obs", "num_gradients": 16},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def depthwise_cnn() -> nn.Sequential:
    """Conv2d -> BatchNorm2d -> SiLU -> depthwise Conv2d(groups=C) -> BN -> pointwise Conv -> pooling -> Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.SiLU(),
        nn.Conv2d(16, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


class _PixelsOnly(nn.Module):
    """A transformers vision backbone called with pixel values only, returning its last hidden state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state


def mobilenet_v2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2Model

    torch.manual_seed(0)
    config = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.35, min_depth=4)
    return _PixelsOnly(MobileNetV2Model(config)).eval()


def convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    config = ConvNextConfig(num_channels=3, image_size=32, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    return _PixelsOnly(ConvNextModel(config)).eval()


def _export(module: nn.Module, folder: Path, size: int) -> tuple[Path, Path]:
    """The module as a .pt2 with a symbolic batch, and a calibration .npz for it."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (torch.randn(2, 3, size, size),), dynamic_shapes=({0: batch},))
    path = folder / "model.pt2"
    torch.export.save(program, str(path))
    from deepopt_core.formats import inspect_model

    name = inspect_model(path).inputs[0].name
    calibration = folder / "calibration.npz"
    np.savez(calibration, **{name: np.random.default_rng(0).standard_normal((32, 3, size, size)).astype(np.float32)})
    return path, calibration


def _grouped(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def test_per_sample_gradients_of_grouped_convs_match_autograd() -> None:
    torch.manual_seed(0)
    for conv, shape in ((nn.Conv2d(6, 6, 3, padding=1, groups=6), (4, 6, 5, 5)),
                        (nn.Conv2d(6, 4, 3, stride=2, groups=2), (4, 6, 7, 7)),
                        (nn.Conv1d(6, 9, 3, padding=1, groups=3), (4, 6, 8))):
        x = torch.randn(*shape)
        out = conv(x)
        grad_out = torch.randn_like(out)
        (out * grad_out).sum().backward()
        per_sample = obs._layer_grads(conv, x, grad_out)  # [b, out, in/groups * k]
        expected = sp.input_dim_view(conv, conv.weight.grad)
        assert per_sample.shape[1:] == expected.shape
        assert torch.allclose(per_sample.sum(0), expected, atol=1e-5), conv


@pytest.mark.parametrize("model", ["depthwise_cnn", pytest.param("mobilenet_v2", marks=pytest.mark.slow),
                                   "convnext"])
def test_second_order_pruning_prunes_grouped_convs_through_optimize(model: str, tmp_path: Path) -> None:
    """The models of the issue: every method completes, the depthwise convolutions are pruned too, nothing is
    left dense, and the saved .pt2 runs."""
    module, size = {"depthwise_cnn": (depthwise_cnn(), 16), "mobilenet_v2": (mobilenet_v2(), 32),
                    "convnext": (convnext(), 32)}[model]
    grouped = [name.removeprefix("model.") for name in _grouped(module)]
    assert grouped, "the model has depthwise convolutions"
    path, calibration = _export(module, tmp_path, size)
    # Every method on the plain CNN; the default (fisher) on the transformers models, whose export, saving and
    # verification take most of the time (the other methods run on them directly below).
    for label, spec in SPECS.items() if model == "depthwise_cnn" else [("fisher", SPECS["fisher"])]:
        result = optimize(path, [spec], {"calibration": calibration}, ["torch_export"],
                          workdir=tmp_path / label, benchmark=BENCH)
        decision = next(d for d in result.decisions if d["type"] == "prune")
        assert decision.get("dense_layers", {}) == {} and decision.get("by_magnitude", {}) == {}, label
        pruned = {name: value for name, value in decision["layers"].items()
                  if any(name.endswith(g) for g in grouped)}
        assert pruned and all(value >= 0.3 for value in pruned.values()), (label, pruned)
        if label == "nm_obs":
            assert decision["verification"]["ok"]


@pytest.mark.parametrize("model", ["mobilenet_v2", "convnext"])
def test_input_hessians_and_nm_obs_prune_the_transformers_vision_models(model: str) -> None:
    module = {"mobilenet_v2": mobilenet_v2, "convnext": convnext}[model]()
    data = [{"pixel_values": torch.randn(16, 3, 32, 32)}]

    def output(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(batch["pixel_values"])

    grouped = _grouped(module)
    report = layerwise.layerwise_obs_prune(module, 0.5, data=data, output_fn=output)
    assert report.details["dense_layers"] == {} and all(report.layers[g] >= 0.3 for g in grouped)
    report = nm.nm_prune(module, 2, 4, method="obs", data=data, num_gradients=16, output_fn=output)
    assert report.details["by_magnitude"] == {} and report.details["verification"]["ok"]


class _Circular(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.circular = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.pool(self.depthwise(self.circular(x))).flatten(1))))


@pytest.mark.parametrize("method", ["fisher", "inputs", "nm_fisher", "nm_inputs"])
def test_a_layer_second_order_pruning_cannot_take_is_left_dense_and_listed(method: str) -> None:
    torch.manual_seed(0)
    model = _Circular().eval()
    before = model.circular.weight.detach().clone()
    data = [{"input": torch.randn(16, 3, 8, 8)}]

    def output(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(batch["input"])

    if method.startswith("nm"):
        report = nm.nm_prune(model, 2, 4, method="obs", hessian=method.removeprefix("nm_"), data=data,
                             num_gradients=16, output_fn=output)
        assert "circular" in report.details["by_magnitude"], report.details
        assert report.details["verification"]["ok"]  # N:M by magnitude there: the pattern holds everywhere
        assert report.layers["circular"] > 0.45 and report.layers["depthwise"] > 0.3
        return
    report = obs.obs_prune(model, 0.5, data=data, hessian=method, num_gradients=16, output_fn=output)
    assert "padding" in report.details["dense_layers"]["circular"]
    assert torch.equal(model.circular.weight, before)
    assert report.layers["fc"] == pytest.approx(0.5, abs=0.05) and report.layers["depthwise"] > 0.3
    assert "circular" not in report.layers


def test_no_supported_layer_is_a_value_error_naming_the_reason() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ValueError, match="reflect"):
        obs.obs_prune(model, 0.5, data=[{"input": torch.randn(4, 3, 4, 4)}], targets=["0"],
                      output_fn=lambda m, b: m(b["input"]))
    with pytest.raises(ValueError, match="magnitude"):
        layerwise.layerwise_obs_prune(model, 0.5, data=[{"input": torch.randn(4, 3, 4, 4)}], targets=["0"],
                                      output_fn=lambda m, b: m(b["input"]))
