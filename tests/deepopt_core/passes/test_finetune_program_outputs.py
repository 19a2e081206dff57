"""A TorchScript or .pt2 model is fine-tuned on its own output (no head can be put on it): a headless encoder
program (MiniLM's .pt2: [batch, sequence, hidden]) with per-row class labels is a 422 at submit, not a shape error
after acceptance (issue 15's matrix: minilm/torch_export/finetune.*)."""

from __future__ import annotations

from deepopt_core.passes.base import SubmitContext, check_pass
from deepopt_core.passes.finetune.config import LoraFinetuneConfig

LORA = LoraFinetuneConfig.model_validate({"type": "finetune", "method": "lora"})


def _context(output: list[object], labels: list[int], dtype: str = "int64") -> SubmitContext:
    model = {"format": "torch_export", "outputs": [{"name": "last_hidden_state", "shape": output}]}
    train = {"format": "npz", "num_rows": 32, "has_labels": True, "arrays": {"labels": labels, "x": [32, 16]},
             "dtypes": {"labels": dtype}}
    return SubmitContext(model=model, train=train)


def test_a_headless_program_with_class_labels_is_refused_naming_its_output() -> None:
    ((loc, message),) = check_pass(LORA, _context(["batch", "sequence", 384], [32]))
    assert loc == () and "'last_hidden_state'" in message and "Hugging Face folder" in message


def test_programs_whose_output_fits_the_labels_are_accepted() -> None:
    assert check_pass(LORA, _context(["batch", 3], [32])) == []  # class scores per row
    assert check_pass(LORA, _context(["batch", "sequence", 5], [32, 16])) == []  # per token
    assert check_pass(LORA, _context(["batch", 1], [32], "float32")) == []  # a value per row
    assert check_pass(LORA, _context(["batch"], [32], "float32")) == []
