"""Layer-wise OBS (`obs` with `hessian: inputs`, SparseGPT-style) on synthetic weights and small real models.

The row solver is checked against its definition (it must reconstruct the layer's outputs better than the same
sparsity chosen by magnitude, and better than its own mask without the OBS update), the N:M variant for its
pattern, and the model-level method for its forward-order grouping (one pass for layers that read the same
tensor), padding-token handling, kept masks across steps, and accuracy against magnitude pruning on the digits
MLP and CNN.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepopt_core.passes.prune import gradual, layerwise, nm, obs, recovery
from deepopt_core.passes.prune import sparsity as sp
from examples.digits import accuracy, digits_split, train_mlp

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    x_train, y_train, x_test, y_test = digits_split(0)
    model = train_mlp(x_train, y_train, epochs=40, seed=0)
    return {"model": model, "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "calib": recovery.make_batches({"input": x_train}, 64, limit=512),
            "dense_acc": accuracy(model, x_test, y_test)}


def _correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) / d**0.5 + torch.eye(d)
    return torch.randn(n, d, generator=gen) @ mix  # correlated inputs: where the update matters


def _error(w: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - pruned) @ x.t()).pow(2).sum())


def test_prune_rows_reconstructs_outputs_better_than_its_mask_alone() -> None:
    x = _correlated(1024, 96)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(40, 96, generator=gen)
    pruned, keep = layerwise.prune_rows(w, x.t() @ x, 0.5, column_block=32)
    assert (pruned[~keep] == 0).all() and (keep.float().mean() == 0.5)
    assert all(float(keep[:, c : c + 32].float().mean()) == 0.5 for c in range(0, 96, 32))  # per column block
    by_magnitude = sp.lowest_score_masks({"w": w.abs()}, 0.5, "layer")["w"]
    magnitude_error = _error(w, w * by_magnitude, x)
    mask_only_error = _error(w, w * keep, x)
    obs_error = _error(w, pruned, x)
    assert obs_error < 0.6 * mask_only_error and obs_error < 0.6 * magnitude_error, (
        obs_error, mask_only_error, magnitude_error)
    # the refit is the least-squares optimum for the mask; SparseGPT's updates alone stop short of it
    optimum = torch.zeros_like(w)
    for r in range(w.shape[0]):
        optimum[r, keep[r]] = torch.linalg.lstsq(x[:, keep[r]], x @ w[r]).solution
    assert obs_error == pytest.approx(_error(w, optimum, x), rel=0.01)
    lazy, lazy_keep = layerwise.prune_rows(w, x.t() @ x, 0.5, column_block=32, refit=False)
    assert torch.equal(lazy_keep, keep) and _error(w, lazy, x) > 1.2 * obs_error


def test_prune_rows_nm_pattern_and_forced_weights() -> None:
    x = _correlated(512, 64)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    already = torch.zeros(16, 64, dtype=torch.bool)
    already[:, 0] = True  # an earlier step pruned column 0: it must stay pruned
    pruned, keep = layerwise.prune_rows(w, x.t() @ x, 0.0, nm=(2, 4), already=already)
    assert (keep.reshape(16, 16, 4).sum(-1) == 2).all()
    assert not keep[:, 0].any() and (pruned[~keep] == 0).all()
    _, keep_short = layerwise.prune_rows(w[:, :10], (x.t() @ x)[:10, :10], 0.0, nm=(2, 4))
    assert keep_short.sum(1).tolist() == [6] * 16  # groups 4 + 4 + 2: the partial group keeps its 2
    unstructured, keep_u = layerwise.prune_rows(w, x.t() @ x, 0.75, already=already)
    assert not keep_u[:, 0].any() and keep_u.float().mean() == pytest.approx(0.25, abs=1 / 64)


def test_dead_inputs_get_zero_weights_and_no_nan() -> None:
    x = _correlated(256, 32)
    x[:, 5] = 0  # an input that never fires: its Hessian row is zero
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    pruned, keep = layerwise.prune_rows(w, x.t() @ x, 0.5)
    assert torch.isfinite(pruned).all() and (pruned[:, 5] == 0).all()


class _Shared(nn.Module):
    """Two heads reading the same tensor, then a layer after them: like query/key/value then the output."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the batch key)
        h = torch.relu(self.inp(input))
        return self.out(torch.relu(self.a(h)) + torch.relu(self.b(h)))


def test_forward_groups_share_a_pass_for_layers_reading_one_tensor() -> None:
    torch.manual_seed(0)
    model = _Shared().eval()
    batch = {"input": torch.randn(32, 8)}
    layers = sp.select_layers(model, keep_head=False)
    groups, repeated = layerwise.forward_groups(model, layers, batch, recovery.model_output)
    assert groups == [["inp"], ["a", "b"], ["out"]] and repeated == set()
    report = layerwise.layerwise_obs_prune(model, 0.5, data=[batch] * 4, keep_head=False)
    assert report.details["forward_passes"] == 3
    assert all(v == pytest.approx(0.5) for v in report.layers.values())


def test_padding_tokens_do_not_enter_the_hessian() -> None:
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    rows = layerwise.input_rows(layer, x, mask)
    assert rows.shape == (8, 4) and torch.equal(rows[:3], x[0, :3])


def test_layerwise_obs_beats_magnitude_on_the_digits_mlp(digits: dict[str, object]) -> None:
    x, y = digits["x_test"], digits["y_test"]
    for level, margin in ((0.7, 0.0), (0.9, 0.1)):
        magnitude = copy.deepcopy(digits["model"])
        gradual.gradual_magnitude_prune(magnitude, level, scope="layer")
        second = copy.deepcopy(digits["model"])
        report = obs.obs_prune(second, level, data=digits["calib"], hessian="inputs")
        assert report.details["hessian"] == "inputs"
        assert all(v == pytest.approx(level, abs=1e-3) for v in report.layers.values())
        acc_magnitude, acc_obs = accuracy(magnitude, x, y), accuracy(second, x, y)
        assert acc_obs >= acc_magnitude + margin, (level, acc_obs, acc_magnitude)
    assert acc_obs >= digits["dense_acc"] - 0.08  # 90%


def test_matching_the_dense_outputs_corrects_earlier_layers_errors(digits: dict[str, object]) -> None:
    batches = digits["calib"]

    def outputs(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([recovery.model_output(m, b) for b in batches])

    reference = outputs(digits["model"])
    errors = {}
    for match_dense in (False, True):
        model = copy.deepcopy(digits["model"])
        report = layerwise.layerwise_obs_prune(model, 0.8, data=batches, keep_head=False, match_dense=match_dense)
        assert report.sparsity == pytest.approx(0.8, abs=1e-3) and report.details["match_dense"] is match_dense
        errors[match_dense] = float((outputs(model) - reference).pow(2).mean())
    # the last layer is refit to the dense outputs themselves: the error on these batches can only go down
    assert errors[True] < 0.9 * errors[False], errors


def test_layerwise_obs_on_a_cnn_and_gradual_steps_keep_masks(digits: dict[str, object]) -> None:
    x_train, y_train = digits["x_train"], digits["y_train"]
    x_test, y_test = digits["x_test"], digits["y_test"]
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))  # fmt: skip
    train = recovery.make_batches({"input": x_train.reshape(-1, 1, 8, 8)}, 64, labels=y_train, shuffle=True)
    recovery.recover(cnn, train, recovery.FineTune(epochs=6, lr=3e-3, method="task"))
    cnn.eval()
    images = x_test.reshape(-1, 1, 8, 8)
    calib = recovery.make_batches({"input": x_train.reshape(-1, 1, 8, 8)}, 64, limit=512)
    magnitude = copy.deepcopy(cnn)
    gradual.gradual_magnitude_prune(magnitude, 0.8, scope="layer")
    second = copy.deepcopy(cnn)
    report = obs.gradual_obs_prune(second, 0.8, data=calib, steps=2, hessian="inputs", callback=lambda *a: {})
    assert [s["target"] for s in report.steps] == pytest.approx(sp.cubic_schedule(0.8, 2), abs=1e-6)
    assert all(v == pytest.approx(0.8, abs=2e-3) for v in report.layers.values())
    first_step = report.steps[0]
    assert first_step["sparsity"] == pytest.approx(sp.cubic_schedule(0.8, 2)[0], abs=2e-3)
    assert accuracy(second, images, y_test) > accuracy(magnitude, images, y_test) + 0.05
    # scope global: the layers' sparsities from one magnitude ranking, OBS within each layer
    by_magnitude = copy.deepcopy(cnn)
    gradual.gradual_magnitude_prune(by_magnitude, 0.9, scope="global")
    allocated = copy.deepcopy(cnn)
    report = obs.obs_prune(allocated, 0.9, data=calib, hessian="inputs", scope="global")
    assert report.sparsity == pytest.approx(0.9, abs=2e-3) and report.details["scope"] == "global"
    assert report.layers == pytest.approx(sp.measured_sparsity(by_magnitude, report.layers).layers, abs=2e-3)
    assert accuracy(allocated, images, y_test) > accuracy(by_magnitude, images, y_test) + 0.04  # 0.936 vs 0.880


def test_layerwise_nm_through_nm_prune(digits: dict[str, object]) -> None:
    model = copy.deepcopy(digits["model"])
    report = nm.nm_prune(model, 2, 4, method="obs", hessian="inputs", data=digits["calib"])
    check = nm.verify_nm(model, 2, 4)
    assert check.ok and set(check.layers) == {"fc1", "fc2"} and report.details["hessian"] == "inputs"
    by_magnitude = copy.deepcopy(digits["model"])
    nm.nm_prune(by_magnitude, 2, 4)
    x, y = digits["x_test"], digits["y_test"]
    assert accuracy(model, x, y) >= accuracy(by_magnitude, x, y) - 0.005


def test_layerwise_obs_on_bert_beats_magnitude() -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertModel(config).eval()
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(12):
        ids = torch.randint(5, 200, (16, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[:4, 9:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})
    calib, test = batches[:8], batches[8:]

    def pooled(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([recovery.mean_pooled_output(m, b) for b in test])

    reference = pooled(model)
    magnitude = copy.deepcopy(model)
    gradual.gradual_magnitude_prune(magnitude, 0.6, scope="layer")
    second = copy.deepcopy(model)
    report = layerwise.layerwise_obs_prune(second, 0.6, data=calib, output_fn=recovery.mean_pooled_output)
    groups = report.details["forward_passes"]
    assert groups == 2 * 4  # per layer: query+key+value together, attention output, intermediate, output
    # random weights: the embeddings dominate the pooled output, so compare the errors, not the cosines
    obs_error = float((pooled(second) - reference).pow(2).mean())
    magnitude_error = float((pooled(magnitude) - reference).pow(2).mean())
    assert obs_error < 0.3 * magnitude_error, (obs_error, magnitude_error)
