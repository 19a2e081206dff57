"""A failed job's message says why: TorchScript's interpreter puts the error on its last line, not its first."""

from __future__ import annotations

import pytest
import torch

from deepopt_core.errors import reason


def test_a_torchscript_failure_is_reported_by_its_error_not_its_banner() -> None:
    @torch.jit.script
    def pick(x: torch.Tensor) -> torch.Tensor:
        return x[torch.tensor([1])]

    with pytest.raises(Exception) as failed:
        pick(torch.zeros(1))
    assert str(failed.value).startswith("The following operation failed in the TorchScript interpreter")
    assert reason(failed.value).startswith("TorchScript: RuntimeError: index 1 is out of bounds")


def test_other_errors_give_their_first_line_within_the_limit() -> None:
    assert reason(ValueError("first\nsecond")) == "first"
    assert reason(ValueError("x" * 900), 300) == "x" * 300
    assert reason(KeyError()) == "KeyError"
