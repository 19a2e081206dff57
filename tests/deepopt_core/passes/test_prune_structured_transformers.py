"""Structured pruning and width students of transformers' own decoder and vision classes (issue 15): the FFN of
Llama and Qwen2 (SwiGLU: the gate and up projections lose the same units, the down projection their columns),
ViT (`mlp.fc1`/`fc2`) and DistilBERT (`ffn.lin1`/`lin2`), with the config's width updated so that plain
transformers loads the saved model; a headless encoder's width student keeps its hidden size; a model whose
structure is not known is a 422 at submit."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.passes.distill.config import DistillConfig
from deepopt_core.passes.distill.students import derive
from deepopt_core.passes.prune import structured
from deepopt_core.passes.prune.config import StructuredPruneConfig
from tests.fixtures.hf_architectures import build_architecture

pytestmark = pytest.mark.timeout(300)
FIELDS = {"llama": "intermediate_size", "qwen2": "intermediate_size", "vit": "intermediate_size",
          "distilbert": "hidden_dim"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(name: str) -> dict[str, torch.Tensor]:
    if name == "vit":
        return {"pixel_values": torch.randn(2, 3, 32, 32)}
    return {"input_ids": torch.randint(3, 60, (2, 12))}


def _output(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_ffn_pruning_of_transformers_classes_saves_what_transformers_loads(name: str, tmp_path: Path) -> None:
    model = build_architecture(name)
    field = FIELDS[name]
    width = getattr(model.config, field)
    groups = structured.find_unit_groups(model, kinds=["ffn"])
    assert groups and all(g.size == width for g in groups)
    report = structured.structured_prune(model, {"ffn": 0.5}, importance="magnitude")
    assert getattr(model.config, field) == width // 2 and report.params_after < report.params_before
    inputs = _inputs(name)
    with torch.no_grad():
        expected = _output(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(tmp_path))
        reloaded = type(model).from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.allclose(_output(reloaded, inputs), expected, atol=1e-5)


def test_swiglu_units_leave_gate_up_and_down_projections_together() -> None:
    model = build_architecture("llama")
    mlp = model.model.layers[0].mlp
    dead = torch.tensor([0, 3, 7, 8, 20, 31])
    with torch.no_grad():  # units whose up projection is 0: act(gate) * 0 adds nothing to the down projection
        mlp.up_proj.weight[dead] = 0.0
    inputs = _inputs("llama")
    with torch.no_grad():
        before = _output(model, inputs)
    (group,) = structured.find_unit_groups(model, kinds=["ffn"])
    structured.apply_group(model, group, torch.tensor([i for i in range(32) if i not in dead.tolist()]))
    layer_mlp = model.model.layers[0].mlp
    assert (layer_mlp.gate_proj.out_features, layer_mlp.up_proj.out_features, layer_mlp.down_proj.in_features) == (
        26, 26, 26)
    with torch.no_grad():
        assert torch.allclose(_output(model, inputs), before, atol=1e-5)


def test_width_students_of_decoders_and_headless_encoders_keep_the_hidden_size() -> None:
    for name, field in (("llama", "intermediate_size"), ("vit", "intermediate_size")):
        teacher = build_architecture(name)
        student, facts = derive(teacher, None, 0.5, "teacher")
        assert student.config.hidden_size == teacher.config.hidden_size
        assert getattr(student.config, field) == getattr(teacher.config, field) // 2
        assert list(facts["ffn_widths"].values())[0] == [getattr(teacher.config, field),
                                                          getattr(teacher.config, field) // 2]
        with torch.no_grad():
            assert _output(student, _inputs(name)).shape == _output(teacher, _inputs(name)).shape


@pytest.mark.parametrize("name", ["roberta", "bert"])
def test_width_students_of_encoders_narrow_the_pooler_and_task_head_too(name: str) -> None:
    # RoBERTa's classification head reads the hidden size through a hidden x hidden layer (classifier.dense), and
    # the narrowed student failed to load it ("size mismatch for classifier.dense.weight", a matrix cell).
    teacher = build_architecture(name, f"{'Roberta' if name == 'roberta' else 'Bert'}ForSequenceClassification")
    student, _ = derive(teacher, None, 0.5, "teacher")
    assert student.config.hidden_size == teacher.config.hidden_size // 2
    with torch.no_grad():
        assert _output(student, _inputs(name)).shape == _output(teacher, _inputs(name)).shape
    dense = dict(student.named_modules())["classifier.dense" if name == "roberta" else "bert.pooler.dense"]
    assert dense.weight.shape == (student.config.hidden_size, student.config.hidden_size)


def test_what_has_no_known_structure_is_refused_at_submit() -> None:
    gpt2 = {"format": "hf", "details": {"model_type": "gpt2"}, "num_parameters": 10_000}
    llama = {"format": "hf", "details": {"model_type": "llama"}, "num_parameters": 10_000}
    train = {"format": "npz", "has_labels": True, "rows": 32}
    width = DistillConfig.model_validate({"type": "distill", "student": {"width_ratio": 0.5}})
    ((loc, message),) = check_pass(width, SubmitContext(model=gpt2, train=train))
    assert loc == ("student", "width_ratio") and "'gpt2'" in message and "student.model_id" in message
    assert check_pass(width, SubmitContext(model=llama, train=train)) == []
    prune = StructuredPruneConfig.model_validate({"type": "prune", "method": "structured", "sparsity": 0.5})
    assert StructuredPruneConfig.available_units(llama) == {"ffn"}
    ((loc, message),) = check_pass(prune, SubmitContext(model=gpt2))
    assert loc == ("method",) and "llama" in message


def test_a_bert_program_keeps_its_heads_and_loses_ffn_units() -> None:
    """A torch.export program of a BERT layer (lifted) reshapes to its head count in the graph: its heads stay
    (it failed on the missing `attention_head_size`), its FFN units go."""
    from deepopt_core.passes.finetune.modules import lift

    model = build_architecture("bert")
    ids = torch.randint(3, 60, (2, 12))
    sequence = torch.export.Dim("sequence", min=2, max=32)
    program = torch.export.export(model, (), kwargs={"input_ids": ids},
                                  dynamic_shapes={"input_ids": {1: sequence}}, strict=False)
    lifted = lift(program.module())
    groups = structured.find_unit_groups(lifted)
    assert [g.kind for g in groups] == ["ffn"] and groups[0].size == model.config.intermediate_size
    structured.apply_group(lifted, groups[0], torch.arange(0, groups[0].size, 2))
    assert lifted(input_ids=torch.randint(3, 60, (2, 7))).last_hidden_state.shape == (2, 7, model.config.hidden_size)
