"""Configs of the `prune` pass, one per method, discriminated by `method`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deepopt_core.passes.base import PassConfig, SubmitContext


class MagnitudePruneConfig(PassConfig):
    """Unstructured magnitude pruning of the weights of Linear/Conv (PyTorch) or MatMul/Gemm/Conv (ONNX).

    `scope="global"` ranks all prunable weights together; `"layer"` prunes each layer to the same sparsity.
    Paper: Han et al., 2015, https://arxiv.org/abs/1506.02626
    """

    type: Literal["prune"] = "prune"
    method: Literal["magnitude"] = "magnitude"
    sparsity: float = Field(..., ge=0.0, lt=1.0, description="Fraction of prunable weights set to zero.")
    scope: Literal["global", "layer"] = "global"
    exclude: list[str] = Field(default_factory=list, description="Layer names to leave dense.")

    def check(self, context: SubmitContext) -> list[tuple[tuple[str | int, ...], str]]:
        """Submit-time check: the model must have weights this pass can prune."""
        if context.model.get("prunable_layers", 1) == 0:
            return [(("sparsity",), "the model has no Linear/Conv (MatMul/Gemm/Conv) weights to prune")]
        return []


# The first is the default when `method` is omitted.
PRUNE_CONFIGS: list[type[PassConfig]] = [MagnitudePruneConfig]
