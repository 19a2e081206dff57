"""Structured pruning of the blocks real CNNs use (issue 15): BatchNorm after a conv and after a depthwise conv,
depthwise convs between a producer and its consumer (MobileNet's expansion channels), TF-style "same" padding
between them (transformers' MobileNetV2), on eager modules and on torch.export programs (whose BatchNorm calls are
lifted to modules). Removing a unit cuts its producer row, its depthwise filter, both BatchNorm entries and its
consumer column together, which a model with dead channels checks exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deepopt_core import optimize
from deepopt_core.passes.finetune.modules import lift
from deepopt_core.passes.prune import structured
from tests.deepopt_core.passes.test_prune_grouped_convs import depthwise_cnn, mobilenet_v2

pytestmark = pytest.mark.timeout(600)
BENCH = {"batch_sizes": [2], "runs": 1, "warmup": 0, "threads": 1}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm statistics a trained model would have (fresh ones fold to the identity and hide slicing bugs)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
    return model


def _program(module: nn.Module, size: int) -> Any:
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(module, (torch.randn(2, 3, size, size),), dynamic_shapes=({0: batch},))


def test_lifted_batch_norms_compute_the_program() -> None:
    model = _random_statistics(depthwise_cnn())
    program = _program(model, 16)
    lifted = lift(program.module())
    x = torch.randn(3, 3, 16, 16)
    assert [n for n, m in lifted.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["1", "4"]
    assert not any(str(node.target) == "aten.batch_norm.default" for node in lifted.graph.nodes)
    assert torch.allclose(lifted(x), model(x), atol=1e-6)


def test_convs_with_string_padding_are_lifted() -> None:
    # transformers' EfficientNet exports its convs as aten.conv2d.padding ("valid"/"same"); none was lifted, so
    # the OBS prune of its .pt2 found "no prunable layers" after acceptance (a matrix cell).
    from deepopt_core.passes.prune.sparsity import select_layers

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.Conv2d(8, 4, 3, padding="valid"),
                          nn.Flatten(), nn.Linear(4 * 14 * 14, 2))
    program = _program(model.eval(), 16)
    assert {str(n.target) for n in program.graph.nodes} >= {"aten.conv2d.padding"}
    lifted = lift(program.module())
    assert [n for n, m in lifted.named_modules() if isinstance(m, nn.Conv2d)] == ["0", "2"]
    assert not any(str(node.target).startswith("aten.conv") for node in lifted.graph.nodes)
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(lifted(x), model(x), atol=1e-6)
    assert list(select_layers(lifted)) == ["0", "2"]


@pytest.mark.parametrize("form", ["eager", "torch_export"])
def test_dead_channels_through_a_depthwise_conv_are_removed_exactly(form: str) -> None:
    model = _random_statistics(depthwise_cnn())
    dead = torch.tensor([1, 4, 5, 9, 14])
    with torch.no_grad():  # channels whose depthwise output is 0 after its BatchNorm: the consumer never sees them
        model[3].weight[dead] = 0.0
        model[3].bias[dead] = 0.0
        model[4].running_mean[dead] = 0.0
        model[4].bias[dead] = 0.0
    module = model if form == "eager" else lift(_program(model, 16).module())
    x = torch.randn(4, 3, 16, 16)
    before = module(x)
    groups = structured.find_unit_groups(module)
    first = next(g for g in groups if g.name == "0")
    assert (first.depthwise, first.norms, first.consumers) == (["3"], ["1", "4"], ["6"])
    keep = torch.tensor([i for i in range(16) if i not in dead.tolist()])
    structured.apply_group(module, first, keep)
    depthwise = structured._get(module, "3")
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (11, 11, 11)
    assert structured._get(module, "4").num_features == 11 and structured._get(module, "6").in_channels == 11
    assert torch.allclose(module(x), before, atol=1e-5)


def test_mobilenet_v2_expansion_channels_are_found_through_padding_and_depthwise_convs() -> None:
    lifted = lift(_program(mobilenet_v2(), 32).module())
    groups = {g.name: g for g in structured.find_unit_groups(lifted)}
    block = groups["model.layer.1.expand_1x1.convolution"]
    assert block.depthwise == ["model.layer.1.conv_3x3.convolution"]
    assert block.consumers == ["model.layer.1.reduce_1x1.convolution"]
    assert sum(bool(g.depthwise) for g in groups.values()) >= 15  # every inverted-residual block
    x = torch.randn(2, 3, 32, 32)
    before = lifted(x)
    for group in groups.values():  # keeping every unit rebuilds the same function
        structured.apply_group(lifted, group, torch.arange(group.size))
    assert torch.equal(lifted(x), before)


def test_structured_pruning_of_a_bn_depthwise_program_through_optimize(tmp_path: Path) -> None:
    model = _random_statistics(depthwise_cnn())
    path = tmp_path / "model.pt2"
    torch.export.save(_program(model, 16), str(path))
    from deepopt_core.formats import inspect_model

    name = inspect_model(path).inputs[0].name
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **{name: np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)})
    spec = {"type": "prune", "method": "structured", "sparsity": 0.5, "importance": "fisher"}
    result = optimize(path, [spec], {"calibration": calibration}, ["torch_export"], workdir=tmp_path / "run",
                      benchmark=BENCH)
    output = lift(torch.export.load(str(result.artifacts[0].path)).module())
    convs = {n: m for n, m in output.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs["3"].groups == convs["3"].out_channels == 8  # the depthwise conv lost half its channels
    assert convs["0"].out_channels == 8 and convs["6"].in_channels == 8
    assert output(torch.randn(5, 3, 16, 16)).shape == (5, 10)


class _Residual(nn.Module):
    """A ResNet basic block: the stream's channels are read by the add and the next conv, its inner ones are not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(8, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(16)
        self.back = nn.Conv2d(16, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = self.stem(x)
        stream = stream + self.back(torch.relu(self.norm(self.inner(stream))))
        return self.head(self.pool(stream).flatten(1))


def test_width_students_narrow_the_same_unit_groups() -> None:
    """`distill` `width_ratio` derives its student from structured pruning's groups: through the BatchNorms and
    the depthwise conv of the BN + depthwise CNN, and in a residual block, whose stream narrows as one group."""
    from deepopt_core.passes.distill.students import derive

    x = torch.randn(2, 3, 16, 16)
    program = lift(_program(_random_statistics(depthwise_cnn()), 16).module())
    student, facts = derive(program, None, 0.5, "teacher")
    assert facts["widths"] == {"0": [16, 8], "6": [32, 16]}
    assert structured._get(student, "3").groups == 8 and student(x).shape == (2, 10)
    torch.manual_seed(0)
    residual = _Residual().eval()
    student, facts = derive(lift(_program(residual, 16).module()), None, 0.5, "teacher")
    assert facts["widths"] == {"stem": [8, 4], "inner": [16, 8]}  # the stream: stem and back add into it
    assert structured._get(student, "back").out_channels == 4 and structured._get(student, "head").in_features == 4
    assert student(x).shape == (2, 4)


def test_a_stateless_module_called_twice_does_not_end_a_group() -> None:
    # torchvision's blocks call one nn.ReLU after each conv; only a layer whose weights are sliced must be read
    # at one place.
    class SharedRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.relu = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    groups = structured.find_unit_groups(SharedRelu())
    assert [(g.name, g.consumers) for g in groups] == [("a", ["b"]), ("b", ["c"])]


@pytest.mark.parametrize("form", ["eager", "torch_export"])
def test_a_residual_stream_is_one_group_and_its_dead_channels_are_removed_exactly(form: str) -> None:
    """The stream of a residual block: every conv that adds into it is a producer, every layer that reads it a
    consumer (DepGraph's coupled channels); channels dead in all producers leave the function unchanged."""
    torch.manual_seed(0)
    model = _Residual().eval()
    _random_statistics(model)
    dead = torch.tensor([1, 5, 6])
    with torch.no_grad():
        for conv in (model.stem, model.back):
            conv.weight[dead] = 0.0
            conv.bias[dead] = 0.0
    module = model if form == "eager" else lift(_program(model, 16).module())
    groups = {g.name: g for g in structured.find_unit_groups(module)}
    stream = groups["stem"]
    assert (stream.kind, stream.size, stream.producers, stream.consumers) == (
        "channels", 8, ["stem", "back"], ["inner", "head"])
    x = torch.randn(3, 3, 16, 16)
    before = module(x)
    keep = torch.tensor([i for i in range(8) if i not in dead.tolist()])
    structured.apply_group(module, stream, keep)
    assert structured._get(module, "inner").in_channels == 5 and structured._get(module, "back").out_channels == 5
    assert torch.allclose(module(x), before, atol=1e-5)


def test_a_legacy_onnx_mobilenet_v2_is_pruned_through_its_computed_pads() -> None:
    """The legacy exporter writes MobileNetV2's TF-style padding as Pad nodes whose pads are computed from
    Constant nodes; converted to torch, the pads are read as the constants they are, so the expansion channels
    still form groups through them (and through the converted global average pool)."""
    import onnx

    from benchmarks import matrix_models as mm
    from deepopt_core.formats.onnx_torch import onnx_to_torch

    arch = next(a for a in mm.ARCHITECTURES if a.name == "mobilenet_v2")
    model = onnx.load(str(mm.model_file(arch, "onnx")))
    name = model.graph.input[0].name
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    module, _ = onnx_to_torch(model, {name: x}, [name])
    groups = structured.find_unit_groups(module)
    assert sum(bool(g.depthwise) for g in groups) >= 15
    before = module(torch.from_numpy(x))
    keep = structured.choose_units(groups, structured.unit_importance(module, groups, "magnitude"), 0.0)
    for group in groups:
        structured.apply_group(module, group, keep[group.name])
    assert torch.allclose(module(torch.from_numpy(x)), before, atol=1e-5)


class _WrittenOutGelu(nn.Module):
    """Linear -> GELU written op by op (as the ONNX exporters write it) -> Linear; `residual` also reads fc1."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head, self.residual = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3), residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        g = h * 0.5 * (1.0 + torch.erf(h / 1.4142135))
        out = self.fc2(g)
        return self.head(out + h if self.residual else out)


def test_an_activation_written_op_by_op_joins_a_group_unless_something_else_reads_it() -> None:
    torch.manual_seed(0)
    assert [(g.name, g.consumers) for g in structured.find_unit_groups(_WrittenOutGelu(False))] == [
        ("fc1", ["fc2"]), ("fc2", ["head"])]
    # fc1 also feeds the add, so fc2's output joins its units: one group, fc2 both reading and writing them.
    assert [(g.name, g.producers, g.consumers) for g in structured.find_unit_groups(_WrittenOutGelu(True))] == [
        ("fc1", ["fc1", "fc2"], ["fc2", "head"])]


@pytest.mark.parametrize("upload", ["onnx", "onnx_dynamo"])
def test_convnext_onnx_exports_have_their_ffn_groups(upload: str) -> None:
    """ConvNeXt's pointwise FFN (pwconv1 -> GELU -> pwconv2) in both exporters' ONNX, converted to torch."""
    import onnx

    from benchmarks import matrix_models as mm
    from deepopt_core.formats.onnx_torch import onnx_to_torch

    arch = next(a for a in mm.ARCHITECTURES if a.name == "convnext")
    model = onnx.load(str(mm.model_file(arch, upload)))
    name = model.graph.input[0].name
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    module, _ = onnx_to_torch(model, {name: x}, [name])
    groups = structured.find_unit_groups(module)
    assert [(g.kind, g.size) for g in groups] == [("neurons", 64), ("neurons", 128)]  # 4x the stages' 16, 32
    keep = structured.choose_units(groups, structured.unit_importance(module, groups, "magnitude"), 0.5)
    for group in groups:
        structured.apply_group(module, group, keep[group.name])
    assert module(torch.from_numpy(np.concatenate([x, x[:1]]))).shape[0] == 3


def _masked_output(model: nn.Module, groups: list[Any], keep: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
    """The model's output with the units not in `keep` zeroed where every consumer of their group reads them."""
    hooks = []
    for group in groups:
        mask = torch.zeros(group.size)
        mask[keep[group.name]] = 1.0
        for name in group.consumers:
            consumer = structured._get(model, name)
            conv = isinstance(consumer, nn.Conv1d | nn.Conv2d | nn.Conv3d)

            def zero(_m: nn.Module, args: tuple[Any, ...], mask: torch.Tensor = mask, conv: bool = conv,
                     width: int = group.consumer_width) -> tuple[Any, ...]:
                inp = args[0]
                scale = mask.reshape((1, -1) + (1,) * (inp.dim() - 2)) if conv else mask.repeat_interleave(width)
                return (inp * scale, *args[1:])

            hooks.append(consumer.register_forward_pre_hook(zero))
    try:
        with torch.no_grad():
            return model(pixel_values=x).logits
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "efficientnet", "convnext"])
def test_removing_units_computes_what_zeroing_them_at_every_consumer_computes(name: str) -> None:
    """The definition of a unit group, checked on transformers' CNNs: cutting the units out of every producer,
    norm, depthwise conv and consumer (ResNet's residual streams and shortcut projections, EfficientNet's
    squeeze-excitation) gives the model that zeroing them at every consumer's input gives."""
    from tests.fixtures.hf_architectures import build_architecture

    model = _random_statistics(build_architecture(name, _HF_CNN[name]))
    groups = structured.find_unit_groups(model, example=structured.example_inputs(model, None))
    assert groups
    if name in ("resnet", "efficientnet"):
        assert any(len(g.producers) > 1 for g in groups)  # a residual stream / an SE product joins producers
    keep = structured.choose_units(groups, structured.unit_importance(model, groups, "magnitude"), 0.5)
    x = torch.randn(3, 3, 32, 32)
    expected = _masked_output(model, groups, keep, x)
    for group in groups:
        structured.apply_group(model, group, keep[group.name])
    with torch.no_grad():
        got = model(pixel_values=x).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


_HF_CNN = {"resnet": "ResNetForImageClassification", "mobilenet_v2": "MobileNetV2ForImageClassification",
           "efficientnet": "EfficientNetForImageClassification", "convnext": "ConvNextForImageClassification"}


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "convnext", "efficientnet"])
def test_transformers_cnns_are_pruned_along_the_chains_of_their_exported_graph(name: str) -> None:
    """torch.fx cannot trace transformers' models; their chains are found in the graph torch.export gives (on
    pixels of the config's size, or the first calibration batch), whose modules carry the model's own names."""
    from tests.fixtures.hf_architectures import build_architecture

    model = build_architecture(name)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels)
    report = structured.structured_prune(model, 0.5, importance="magnitude")
    assert report.groups and report.params_after < report.params_before
    with torch.no_grad():
        after = model(pixel_values=torch.randn(3, 3, 32, 32))
    key = "logits" if hasattr(before, "logits") else "pooler_output"
    assert getattr(after, key).shape[1:] == getattr(before, key).shape[1:]


def test_which_transformers_cnns_structured_pruning_takes_is_known_at_submit() -> None:
    from deepopt_core.passes.base import SubmitContext, check_pass
    from deepopt_core.passes.prune.config import StructuredPruneConfig

    def hf(kind: str) -> dict[str, object]:
        return {"format": "hf", "details": {"model_type": kind}}

    assert StructuredPruneConfig.available_units(hf("resnet")) == {"channels"}
    assert StructuredPruneConfig.available_units(hf("convnext")) == {"neurons"}
    assert StructuredPruneConfig.available_units(hf("efficientnet")) == {"channels"}  # SE joins its expansion
    spec = StructuredPruneConfig.model_validate({"type": "prune", "method": "structured", "sparsity": 0.5})
    ((loc, message),) = check_pass(spec, SubmitContext(model=hf("swin")))
    assert loc == ("method",) and "no prunable structure" in message
    channels = StructuredPruneConfig.model_validate({"type": "prune", "method": "structured", "sparsity": 0.5,
                                                     "units": ["channels"]})
    assert "Hugging Face config" in (channels.output_problem("hf") or "") and channels.output_problem("onnx") is None


def test_gpt2_programs_have_their_conv1d_projections_lifted_and_counted() -> None:
    # transformers' Conv1D exports as aten.addmm(bias, rows, weight): GPT-2's .pt2 had no prunable layer, so OBS
    # ended "no prunable layers selected" after acceptance (a matrix cell) and its sparsity read 0.
    from benchmarks import matrix_models as mm
    from deepopt_core.formats.torch_common import prunable_params
    from deepopt_core.formats.torch_export import load_torch_export
    from deepopt_core.passes.prune.sparsity import select_layers

    arch = mm.BY_NAME["gpt2"]
    program = load_torch_export(mm.model_file(arch, "torch_export"))
    assert len(prunable_params(program)) == 9  # 2 layers x (c_attn, c_proj, c_fc, mlp c_proj), and lm_head
    feeds = [torch.from_numpy(v) for v in mm.example_inputs(arch, rows=2).values()]
    before = program(*feeds)
    lifted = lift(program)
    assert not any(str(n.target) == "aten.addmm.default" for n in lifted.graph.nodes)
    assert len(select_layers(lifted)) == 8
    after = lifted(*feeds)
    assert torch.equal(before[0] if isinstance(before, tuple | list) else before,
                       after[0] if isinstance(after, tuple | list) else after)
