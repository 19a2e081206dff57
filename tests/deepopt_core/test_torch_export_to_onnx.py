"""ONNX exports of ``torch.export`` programs (.pt2 uploads) keep the program's symbolic dimensions.

The matrix's ViT and MiniLM .pt2 uploads failed after acceptance under every pass with ONNX output: the export
traced the program to TorchScript, and the trace wrote the sample's batch (ViT's class token expanded to it, the
attention reshaped into heads of it) as constants, so the benchmark's batch of 1 failed in ONNX Runtime (``Concat``,
``Gather``). Programs that compute with their sizes now go through the dynamo exporter, which re-exports them with
the dimensions symbolic. A program exported with a fixed sequence keeps it fixed, and inspection says so; a dataset
longer than the sequence range a program was exported with is refused at submit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import matrix_models as mm
from deepopt_core.formats.onnx import export_to_onnx
from deepopt_core.formats.ort_session import inference_session
from deepopt_core.formats.torch_common import computes_with_sizes, run_module
from deepopt_core.formats.torch_export import inspect_torch_export, load_torch_export
from deepopt_core.specs import ModelInfo

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield


def _export_and_run(pt2: Path, info: ModelInfo, arch: mm.Architecture, tmp_path: Path,
                    shapes: list[tuple[int, int]]) -> None:
    """Export on the 2-row example; the ONNX model matches the program on each (rows, sequence) in `shapes`."""
    module = load_torch_export(pt2)
    assert computes_with_sizes(module)
    names = [t.name for t in info.inputs]
    export_to_onnx(module, tmp_path / "exported.onnx", mm.example_inputs(arch, rows=2), info.inputs)
    session = inference_session(str(tmp_path / "exported.onnx"))
    for rows, sequence in shapes:
        feeds = {name: value[:, :sequence] if value.ndim == 2 else value
                 for name, value in mm.example_inputs(arch, rows=rows, seed=rows).items()}
        expected = run_module(module, feeds, names)
        got = session.run(None, feeds)
        assert got[0].shape == expected[0].shape
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-3, atol=1e-4)


def test_vit_pt2_exports_to_onnx_that_takes_other_batch_sizes(tmp_path: Path) -> None:
    arch = mm.BY_NAME["vit"]
    pt2 = mm.model_file(arch, "torch_export")
    info = inspect_torch_export(pt2)
    assert not isinstance(info.inputs[0].shape and info.inputs[0].shape[0], int)
    _export_and_run(pt2, info, arch, tmp_path, [(1, 0), (3, 0)])


def test_torchscript_output_of_a_pt2_that_computes_with_its_sizes_is_refused_at_submit() -> None:
    # The matrix's Qwen2 and MiniLM .pt2 uploads with TorchScript output failed after acceptance in the benchmark
    # (the trace expanded the causal mask to the example's batch of 2: "index 1 is out of bounds").
    from pydantic import TypeAdapter

    from deepopt_core.planning import PlanError, plan
    from deepopt_core.specs import PassSpec

    passes = TypeAdapter(list[PassSpec]).validate_python(
        [{"type": "quantize", "mode": "weight_only", "weight_dtype": "int4"}])
    for name in ("qwen2", "minilm"):
        info = inspect_torch_export(mm.model_file(mm.BY_NAME[name], "torch_export"))
        assert info.details["computes_with_sizes"] is True
        with pytest.raises(PlanError) as refused:
            plan("torch_export", passes, ["torchscript"], info.details)
        assert [p.loc for p in refused.value.problems] == [("outputs",)]
        assert "torch_export" in refused.value.problems[0].message
        plan("torch_export", passes, ["torch_export", "onnx"], info.details)  # the outputs that keep the sizes


def test_minilm_pt2_exports_to_onnx_that_takes_other_batches_and_sequences(tmp_path: Path) -> None:
    arch = mm.BY_NAME["minilm"]
    pt2 = mm.model_file(arch, "torch_export")
    info = inspect_torch_export(pt2)
    assert all(t.shape and not any(isinstance(d, int) for d in t.shape) for t in info.inputs), info.inputs
    _export_and_run(pt2, info, arch, tmp_path, [(1, mm.SEQUENCE), (3, 8)])


def test_a_pt2_exported_with_a_fixed_sequence_keeps_it_and_inspection_reports_it(tmp_path: Path) -> None:
    import torch

    arch = mm.BY_NAME["bert"]  # BertModel's code, as MiniLM's, at a size that exports in seconds
    feeds = mm.example_inputs(arch)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(mm.build_torch_module(arch),
                                  tuple(torch.from_numpy(feeds[n]) for n in arch.input_names),
                                  dynamic_shapes=tuple({0: batch} for _ in arch.input_names))
    pt2 = tmp_path / "bert-fixed-sequence.pt2"
    torch.export.save(program, str(pt2))
    info = inspect_torch_export(pt2)
    # The sequence is a number, so datasets are checked against it and synthetic inputs take it.
    assert all(t.shape is not None and t.shape[1] == mm.SEQUENCE and not isinstance(t.shape[0], int)
               for t in info.inputs), info.inputs
    _export_and_run(pt2, info, arch, tmp_path, [(1, mm.SEQUENCE), (3, mm.SEQUENCE)])


def test_a_dataset_longer_than_the_programs_sequence_range_is_refused() -> None:
    import torch

    from deepopt_core.datasets import check_dataset_for_model
    from deepopt_core.specs import DatasetInfo

    arch = mm.BY_NAME["minilm"]
    pt2 = mm.model_file(arch, "torch_export")
    info = inspect_torch_export(pt2)

    def dataset(sequence: int) -> DatasetInfo:
        return DatasetInfo(format="npz", num_rows=4, arrays={n: [4, sequence] for n in arch.input_names},
                           dtypes=dict.fromkeys(arch.input_names, "int64"))

    assert check_dataset_for_model(dataset(mm.MAX_SEQUENCE), info) == []
    problems = check_dataset_for_model(dataset(mm.MAX_SEQUENCE + 1), info)
    assert len(problems) == 3 and f"at most {mm.MAX_SEQUENCE} at dimension 1" in problems[0], problems
    # What the refusal saves: the program checks its range when it runs, after the job was accepted.
    longer = torch.ones(1, mm.MAX_SEQUENCE + 1, dtype=torch.int64)
    with pytest.raises(AssertionError, match=f"<= {mm.MAX_SEQUENCE}"):
        load_torch_export(pt2)(longer, longer, torch.zeros_like(longer))


def test_a_pt2_with_a_node_after_its_output_keeps_the_output_name_once(tmp_path: Path) -> None:
    """An adapter after ViT's classifier: the output keeps the .pt2's name (``linear_12``), which the dynamo
    exporter also gives the classifier's value inside the graph; written twice, the ONNX checker refused it."""
    import onnx
    import torch

    arch = mm.BY_NAME["vit"]
    pt2 = mm.model_file(arch, "torch_export")
    info = inspect_torch_export(pt2)
    module: Any = load_torch_export(pt2)  # a torch.fx GraphModule
    output = next(node for node in module.graph.nodes if node.op == "output")
    last = output.args[0][0]
    with module.graph.inserting_after(last):
        scaled = module.graph.call_function(torch.ops.aten.mul.Tensor, (last, 2.0))
    output.args = ((scaled,),)
    module.recompile()
    names = [t.name for t in info.outputs]
    exported = export_to_onnx(module, tmp_path / "exported.onnx", mm.example_inputs(arch), info.inputs,
                              output_names=names)
    onnx.checker.check_model(exported)
    assert [o.name for o in exported.graph.output] == names == [last.name]
    feeds = mm.example_inputs(arch, rows=1, seed=1)
    got = inference_session(str(tmp_path / "exported.onnx")).run(None, feeds)
    np.testing.assert_allclose(got[0], run_module(module, feeds, ["pixel_values"])[0], rtol=1e-3, atol=1e-4)


def test_a_pt2_the_dynamo_exporter_cannot_convert_to_opset_17_is_exported_at_18(tmp_path: Path) -> None:
    """GPT-2's attention splits with opset 18's ``Split(num_outputs)``, which onnx's converter keeps in an opset-17
    graph that the ONNX checker refuses: the export keeps opset 18 (the export pass says so)."""
    import onnx

    arch = mm.BY_NAME["gpt2"]
    pt2 = mm.model_file(arch, "torch_export")
    info = inspect_torch_export(pt2)
    module = load_torch_export(pt2)
    exported = export_to_onnx(module, tmp_path / "exported.onnx", mm.example_inputs(arch), info.inputs, opset=17)
    onnx.checker.check_model(exported)
    assert {o.version for o in exported.opset_import if o.domain in ("", "ai.onnx")} == {18}
    feeds = {name: value[:, :8] for name, value in mm.example_inputs(arch, rows=1, seed=1).items()}
    got = inference_session(str(tmp_path / "exported.onnx")).run(None, feeds)
    np.testing.assert_allclose(got[0], run_module(module, feeds, list(arch.input_names))[0], rtol=1e-3, atol=1e-4)
