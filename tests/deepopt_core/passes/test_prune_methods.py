"""The pruning methods of `deepopt_core.passes.prune` (gradual magnitude, OBS, N:M, structured) on small real models.

Models built once per module, in a few seconds on one thread: the digits MLP of `examples.digits` (trained), a
small digits CNN (trained), a 2-layer BERT (`BertConfig`, random weights, eager attention) and a 2-layer
`nn.TransformerEncoder`. Each test checks results (sparsity pattern, accuracy or output closeness), not only that
the code ran.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deepopt_core.passes.prune import gradual, nm, obs, recovery, structured
from deepopt_core.passes.prune import sparsity as sp
from examples.digits import accuracy, digits_split, train_mlp

pytestmark = pytest.mark.timeout(120)


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
    return {
        "model": model,
        "x_test": x_test,
        "y_test": y_test,
        "calib": recovery.make_batches({"input": x_train}, 64, limit=512),
        "train": recovery.make_batches({"input": x_train}, 64, labels=y_train),
        "dense_acc": accuracy(model, x_test, y_test),
    }


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip


@pytest.fixture(scope="module")
def cnn(digits: dict[str, object]) -> dict[str, object]:
    x_train, y_train, x_test, y_test = digits_split(0)
    x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    model = _small_cnn()
    data = recovery.make_batches({"input": x_train}, 64, labels=y_train, shuffle=True)
    recovery.recover(model, data, recovery.FineTune(epochs=6, lr=3e-3, method="task"))
    return {"model": model.eval(), "x_test": x_test, "y_test": y_test, "train": data,
            "dense_acc": accuracy(model, x_test, y_test)}


@pytest.fixture(scope="module")
def bert() -> dict[str, object]:
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
        mask[:4, 9:] = 0  # some padded rows
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})
    return {"model": model, "calib": batches[:8], "test": batches[8:]}


def _pooled(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([recovery.mean_pooled_output(model, b) for b in batches])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a, b, dim=-1).mean())


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------


def test_cubic_schedule() -> None:
    steps = sp.cubic_schedule(0.9, 5)
    assert steps[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - t/n)^3
    assert steps[0] == pytest.approx(0.9 - 0.9 * (1 - 1 / 5) ** 3)
    assert sp.cubic_sparsity(0, 5, 0.9, 0.1) == pytest.approx(0.1)


def test_select_layers_head_globs_and_excludes(digits: dict[str, object]) -> None:
    model = digits["model"]
    assert list(sp.select_layers(model)) == ["fc1", "fc2"]  # fc3 is the head
    assert list(sp.select_layers(model, keep_head=False)) == ["fc1", "fc2", "fc3"]
    assert list(sp.select_layers(model, targets=["fc*"], exclude=["fc1"], keep_head=False)) == ["fc2", "fc3"]
    assert sp.unmatched_patterns(model, ["fc9", "fc*"]) == ["fc9"]


# ---------------------------------------------------------------------------------------------------------------
# OBS
# ---------------------------------------------------------------------------------------------------------------


def test_per_sample_gradients_match_autograd(cnn: dict[str, object]) -> None:
    model = copy.deepcopy(cnn["model"])
    layers = {"3": model[3], "11": model[11]}  # a Conv2d and a Linear
    batch = {k: v[:4] for k, v in cnn["train"][0].items()}
    loss_fn = recovery.per_sample_loss("labels")
    generator = obs.per_sample_gradients(model, layers, [batch], loss_fn, 4, cycle=False)
    _, grads = next(generator)
    conv, linear = grads("3"), grads("11")
    generator.close()
    for i in range(4):
        model.zero_grad()
        loss_fn(model, {k: v[i : i + 1] for k, v in batch.items()}).sum().backward()
        torch.testing.assert_close(conv[i], model[3].weight.grad.reshape(16, -1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(linear[i], model[11].weight.grad, rtol=1e-4, atol=1e-6)


def test_woodbury_inverse_matches_direct_inverse() -> None:
    gen = torch.Generator().manual_seed(0)
    layout = obs.BlockLayout.of(6, 10, 8)  # 60 weights -> 8 blocks of 8 with padding
    grads = torch.randn(40, 6, 10, generator=gen)
    woodbury = obs.BlockInverseFisher(layout, 40, 1e-2, "woodbury", torch.float64)
    rank1 = obs.BlockInverseFisher(layout, 40, 1e-2, "woodbury", torch.float64)
    direct = obs.BlockInverseFisher(layout, 40, 1e-2, "direct", torch.float64)
    woodbury.add(grads)
    direct.add(grads)
    rank1.add(grads[:1])  # the first chunk fixes lambda; then one gradient at a time (Sherman-Morrison)
    for i in range(1, 40):
        rank1.add(grads[i : i + 1])
    blocks = layout.to_blocks(grads.double())  # [40, nb, B]
    for result in (woodbury, rank1, direct):
        fisher = torch.einsum("inb,inc->nbc", blocks, blocks) / 40
        fisher.diagonal(dim1=1, dim2=2).add_(result.lam)
        torch.testing.assert_close(result.finalize(), torch.linalg.inv(fisher), rtol=1e-6, atol=1e-8)
    assert woodbury.lam == direct.lam == pytest.approx(1e-2 * float(grads.pow(2).mean()))


def test_multi_weight_update_is_the_constrained_optimum() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    fisher = a @ a.T + 0.5 * torch.eye(8, dtype=torch.float64)
    w = torch.randn(1, 8, generator=gen, dtype=torch.float64)
    prune = torch.zeros(1, 8, dtype=torch.bool)
    prune[0, [1, 4, 6]] = True
    new = obs.multi_weight_update(w, torch.linalg.inv(fisher).unsqueeze(0), prune)
    # KKT of min d^T F d s.t. d_Q = -w_Q: free part d_R = -F_RR^-1 F_RQ d_Q
    q, r = prune[0], ~prune[0]
    d_q = -w[0, q]
    d_r = -torch.linalg.solve(fisher[r][:, r], fisher[r][:, q] @ d_q)
    expected = w.clone()[0]
    expected[q] = 0
    expected[r] += d_r
    torch.testing.assert_close(new[0], expected)


def test_obs_beats_magnitude_at_high_sparsity(digits: dict[str, object]) -> None:
    x, y = digits["x_test"], digits["y_test"]
    results = {}
    for level in (0.7, 0.9):
        magnitude = copy.deepcopy(digits["model"])
        gradual.gradual_magnitude_prune(magnitude, level, scope="layer")
        second = copy.deepcopy(digits["model"])
        report = obs.obs_prune(second, level, data=digits["calib"], block_size=32, num_gradients=512,
                               update="sequential")
        assert report.sparsity == pytest.approx(level, abs=1e-3)
        assert all(v == pytest.approx(level, abs=1e-3) for v in report.layers.values())
        results[level] = (accuracy(magnitude, x, y), accuracy(second, x, y))
    assert results[0.7][1] >= results[0.7][0]
    assert results[0.9][1] >= results[0.9][0] + 0.1, results  # about 0.93 vs 0.65
    assert results[0.9][1] >= digits["dense_acc"] - 0.08


def test_obs_global_scope_and_memory_groups(digits: dict[str, object]) -> None:
    model = copy.deepcopy(digits["model"])
    # a budget smaller than one layer's inverse: one group (gradient pass) per layer, global ranking in two passes
    report = obs.obs_prune(model, 0.8, data=digits["calib"], scope="global", memory_mb=0.01, num_gradients=128)
    assert report.details["groups"] == 2
    assert report.sparsity == pytest.approx(0.8, abs=1e-3)
    assert accuracy(model, digits["x_test"], digits["y_test"]) > 0.8


# ---------------------------------------------------------------------------------------------------------------
# Gradual magnitude with fine-tuning
# ---------------------------------------------------------------------------------------------------------------


def test_gradual_magnitude_keeps_masks_through_fine_tuning(digits: dict[str, object]) -> None:
    model = copy.deepcopy(digits["model"])
    report = gradual.gradual_magnitude_prune(model, 0.9, steps=3, fine_tune={"epochs": 1, "lr": 1e-3},
                                             train_data=digits["train"])
    targets = [step["target"] for step in report.steps]
    assert targets == pytest.approx(sp.cubic_schedule(0.9, 3), abs=1e-6)
    assert [step["sparsity"] for step in report.steps] == pytest.approx(targets, abs=2e-3)
    for name, mask in report.details["keep"].items():
        assert not bool(sp.select_layers(model)[name].weight[~mask].any())  # pruned weights stayed zero
    assert report.steps[-1]["recovery"]["method"] == "task"
    assert accuracy(model, digits["x_test"], digits["y_test"]) >= digits["dense_acc"] - 0.03


# ---------------------------------------------------------------------------------------------------------------
# N:M
# ---------------------------------------------------------------------------------------------------------------


def test_nm_magnitude_and_obs_pattern(digits: dict[str, object], cnn: dict[str, object]) -> None:
    for method in ("magnitude", "obs"):
        model = copy.deepcopy(digits["model"])
        report = nm.nm_prune(model, 2, 4, method=method, data=digits["calib"], num_gradients=128,
                             update="sequential" if method == "obs" else "multi")
        check = nm.verify_nm(model, 2, 4)
        assert check.ok and set(check.layers) == {"fc1", "fc2"}
        assert all(layer["sparsity"] == 0.5 for layer in check.layers.values())
        assert report.details["verification"]["ok"]
        assert accuracy(model, digits["x_test"], digits["y_test"]) > 0.9
    conv = copy.deepcopy(cnn["model"])
    nm.nm_prune(conv, 1, 4, exclude=["0"])  # first conv has 9 inputs per row: groups 4+4+1
    check = nm.verify_nm(conv, 1, 4)
    assert check.ok and "0" not in check.layers and check.layers["3"]["sparsity"] == 0.75
    # Hugging Face Conv1D is stored [in, out]: groups run down its first dimension
    from transformers.pytorch_utils import Conv1D

    holder = nn.Sequential(Conv1D(6, 8), nn.ReLU(), nn.Linear(6, 2))
    nm.nm_prune(holder, 2, 4)
    w = holder[0].weight.detach()  # [8 in, 6 out]
    assert int((w.reshape(2, 4, 6) != 0).sum(1).max()) <= 2 and nm.verify_nm(holder, 2, 4).ok


def test_nm_verifier_finds_violations() -> None:
    layer = nn.Linear(8, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0, 2, 3, 0, 4, 0], [0, 0, 1, 1, 1, 1, 1, 0]]))
    model = nn.Sequential(layer, nn.Linear(2, 2))
    check = nm.verify_nm(model, 2, 4, ["0"])
    assert not check.ok
    assert check.layers["0"]["violations"] == 1  # only the second group of row 2 has 3 nonzeros
    assert nm.nm_violations(torch.tensor([[1.0, 2, 3, 0, 1, 0, 0, 0]]), 2, 4) == 1


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"), helper.make_node("Relu", ["h"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nm_onnx_orientation(digits: dict[str, object], tmp_path: Path) -> None:
    import onnxruntime as ort
    from onnx import numpy_helper

    from examples.digits import save_onnx

    # MatMul weights are [in, out]: the groups run along axis 0
    weight = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    pruned, check = nm.nm_prune_onnx(_matmul_model(weight), 2, 4, keep_head=False)
    w = numpy_helper.to_array(pruned.graph.initializer[0])
    assert check.ok and int((w.reshape(2, 4, 3) != 0).sum(1).max()) == 2
    expected = nm.nm_keep_mask(torch.from_numpy(np.abs(weight.T)), 2, 4).numpy().T
    np.testing.assert_array_equal(w != 0, expected)
    # Gemm (transB=1, [out, in]) of the exported digits MLP: same masks as pruning the torch weights
    path = save_onnx(digits["model"], tmp_path / "mlp.onnx")
    model = onnx.load(str(path))
    pruned, check = nm.nm_prune_onnx(model, 2, 4)
    assert check.ok and set(check.layers) == {"fc1", "fc2"}  # fc3 is the head
    assert all(v["sparsity"] == 0.5 for v in check.layers.values())
    torch_model = copy.deepcopy(digits["model"])
    nm.nm_prune(torch_model, 2, 4)
    onnx_w = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    np.testing.assert_array_equal(onnx_w["fc1.weight"] != 0, torch_model.fc1.weight.detach().numpy() != 0)
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    x = digits["x_test"][:64]
    out = session.run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, torch_model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Structured
# ---------------------------------------------------------------------------------------------------------------


def test_structured_cnn_shrinks_and_recovers(cnn: dict[str, object], tmp_path: Path) -> None:
    import onnxruntime as ort

    model = copy.deepcopy(cnn["model"])
    groups = structured.find_unit_groups(model)
    assert [(g.name, g.kind, g.norms, g.consumers, g.consumer_width) for g in groups] == [
        ("0", "channels", ["1"], ["3"], 1), ("3", "channels", ["4"], ["7"], 1),
        ("7", "channels", [], ["11"], 4), ("11", "neurons", [], ["13"], 1)]  # fmt: skip
    report = structured.structured_prune(model, 0.5, importance="fisher", data=cnn["train"][:4],
                                         fine_tune={"epochs": 4, "lr": 2e-3}, train_data=cnn["train"])
    assert report.params_after < 0.35 * report.params_before
    assert model[3].weight.shape == (8, 4, 3, 3) and model[4].num_features == 8
    assert model[11].weight.shape == (16, 64)
    assert accuracy(model, cnn["x_test"], cnn["y_test"]) >= cnn["dense_acc"] - 0.04
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(cnn["x_test"][:8])).numpy()
    np.testing.assert_allclose(session.run(None, {"input": cnn["x_test"][:8]})[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "fisher"])
def test_structured_mlp_importances(digits: dict[str, object], importance: str) -> None:
    model = copy.deepcopy(digits["model"])
    report = structured.structured_prune(model, 0.5, importance=importance, data=digits["calib"],
                                         fine_tune={"epochs": 3, "lr": 1e-3}, train_data=digits["train"])
    assert (model.fc1.out_features, model.fc2.in_features, model.fc2.out_features) == (64, 64, 32)
    assert model.fc3.in_features == 32 and report.params_after < 0.4 * report.params_before
    assert accuracy(model, digits["x_test"], digits["y_test"]) >= digits["dense_acc"] - 0.04


def test_structured_bert_heads_ffn_distill_and_reload(bert: dict[str, object], tmp_path: Path) -> None:
    dense = bert["model"]
    reference = _pooled(dense, bert["test"])
    model = copy.deepcopy(dense)
    naive = copy.deepcopy(dense)
    structured.structured_prune(naive, {"heads": 0.5, "ffn": 0.5}, importance="magnitude")
    report = structured.structured_prune(
        model, {"heads": 0.5, "ffn": 0.5}, data=bert["calib"], output_fn=recovery.mean_pooled_output,
        reconstruct=True, fine_tune={"epochs": 3, "lr": 5e-4, "distill_loss": "cosine", "hidden_weight": 1.0},
    )
    layer = model.encoder.layer[0]
    assert layer.attention.self.query.out_features == 32 and layer.attention.self.num_attention_heads == 2
    assert layer.attention.output.dense.in_features == 32 and layer.intermediate.dense.out_features == 128
    assert model.config.intermediate_size == 128
    assert report.params_after < report.params_before - 2 * (4 * 64 * 32 + 2 * 64 * 128)
    pruned_cos = _cosine(reference, _pooled(model, bert["test"]))
    assert pruned_cos > 0.97 and pruned_cos > _cosine(reference, _pooled(naive, bert["test"]))
    model.save_pretrained(str(tmp_path / "pruned"))
    reloaded = structured.load_pruned_bert(tmp_path / "pruned")
    torch.testing.assert_close(_pooled(reloaded, bert["test"]), _pooled(model, bert["test"]))


def test_recover_freeze_keeps_embeddings(bert: dict[str, object]) -> None:
    dense = bert["model"]
    model = copy.deepcopy(dense)
    structured.structured_prune(model, {"heads": 0.5, "ffn": 0.5}, importance="magnitude")
    embeddings = {k: v.clone() for k, v in model.embeddings.state_dict().items()}
    query = model.encoder.layer[0].attention.self.query.weight.detach().clone()
    spec = recovery.FineTune.from_config({"epochs": 1, "lr": 1e-3, "method": "distill", "distill_loss": "cosine",
                                          "hidden_weight": 1.0, "freeze": ["embeddings"]})
    assert spec is not None and spec.freeze == ("embeddings",)
    recovery.recover(model, bert["calib"], spec, teacher=recovery.snapshot(dense),
                     output_fn=recovery.mean_pooled_output)
    for key, value in model.embeddings.state_dict().items():
        torch.testing.assert_close(value, embeddings[key])
    assert not torch.equal(model.encoder.layer[0].attention.self.query.weight, query)
    assert all(p.requires_grad for p in model.parameters())  # frozen only while recovering


def test_structured_transformer_encoder_layer() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(),
                          nn.Linear(6 * 32, 5)).eval()
    x = torch.randn(64, 6, 32)
    padding = torch.zeros(64, 6, dtype=torch.bool)
    with torch.no_grad():
        before = model(x)
        before_masked = model[0](x, src_key_padding_mask=padding | (torch.arange(6) >= 4))
    converted = copy.deepcopy(model)
    structured.find_unit_groups(converted, kinds=["heads"])
    assert isinstance(converted[0].layers[0].self_attn, structured.PrunedMultiheadAttention)
    with torch.no_grad():  # the replacement computes the same function, padding masks included
        torch.testing.assert_close(converted(x), before, rtol=1e-4, atol=1e-5)
        after_masked = converted[0](x, src_key_padding_mask=padding | (torch.arange(6) >= 4))
        torch.testing.assert_close(after_masked, before_masked, rtol=1e-4, atol=1e-5)
    data = [{"input": x[i : i + 16]} for i in range(0, 64, 16)]
    report = structured.structured_prune(converted, 0.5, data=data, reconstruct=True)
    assert converted[0].layers[1].self_attn.q_proj.out_features == 16
    assert converted[0].layers[1].linear1.out_features == 32
    assert report.params_after < report.params_before
    with torch.no_grad():
        assert _cosine(before, converted(x)) > 0.9


# ---------------------------------------------------------------------------------------------------------------
# Compact ONNX storage
# ---------------------------------------------------------------------------------------------------------------


def test_compact_onnx_is_smaller_and_runs_the_same(digits: dict[str, object], tmp_path: Path) -> None:
    import onnxruntime as ort

    from examples.digits import save_onnx

    model = copy.deepcopy(digits["model"])
    gradual.gradual_magnitude_prune(model, 0.9, scope="layer")
    dense_path = save_onnx(model, tmp_path / "dense.onnx")
    dense = onnx.load(str(dense_path))
    report = sp.save_compact_onnx(dense, tmp_path / "compact.onnx", archive=True)
    assert set(report.sparse_initializers) == {"fc1.weight", "fc2.weight"}
    assert report.sparse_bytes < 0.5 * report.dense_bytes and report.written_bytes < report.sparse_bytes
    compact = onnx.load(str(tmp_path / "compact.onnx"))
    onnx.checker.check_model(compact)
    measured = sp.onnx_measured_sparsity(compact)
    assert measured.layers["fc1"] == pytest.approx(0.9, abs=1e-3)
    x = digits["x_test"][:32]
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
               for p in (dense_path, tmp_path / "compact.onnx")]
    np.testing.assert_array_equal(outputs[0], outputs[1])
