"""Config of the `auto` pass: the user states an objective, an accuracy bound and a budget; the pass finds a recipe.

Light on purpose (the API imports it to validate job specs).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deepopt_core.passes.base import PassConfig, SubmitContext

Problems = list[tuple[tuple[str | int, ...], str]]
SearchablePass = Literal["quantize", "prune", "distill"]
DEFAULT_ALLOWED: tuple[SearchablePass, ...] = ("quantize", "prune")


class AutoBudget(BaseModel):
    """How much searching the user pays for: the search stops at whichever limit it reaches first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int = Field(12, ge=1, le=500, description="Most recipes measured (recipes rejected from estimates "
                        "without running do not count).")
    minutes: float = Field(30.0, gt=0, le=24 * 60, description="Wall-clock limit of the search; a trial already "
                           "running finishes, and the best model found so far is returned.")


class AutoConfig(PassConfig):
    """Find the fastest (or smallest) model that loses at most `max_accuracy_drop` on the job's eval dataset.

    The pass measures the model it receives, then candidate recipes of the other passes (quantization modes,
    pruning sparsities, and combinations of the ones that held the bound), the cheap and promising ones first.
    With the job's train dataset it also searches the recipes that train (they cost minutes, so they come after
    the cheap ones): structured pruning with fine-tuning (`prune`) and a student of half the width distilled from
    the model (`distill`).
    Recipes are rejected without running when the measured sensitivities of their parts say they cannot meet the
    bound (a pruning sparsity above one that already lost too much; a combination whose parts' drops add up past
    the bound) or cannot beat the best model found so far. Every trial (recipe, metrics, time) is recorded in the
    job's decisions and report; the final candidates are timed again, interleaved with the original, before one
    is chosen. When no recipe meets the bound, the model with the smallest drop on the Pareto front is returned
    and its benchmark says `met_bound: false`. Accuracy-driven tuning as in Intel Neural Compressor's
    strategies; the early rejection follows the per-layer sensitivity idea of Wu et al., 2020,
    https://arxiv.org/abs/2004.09602
    """

    type: Literal["auto"] = Field("auto", description="The pass: `auto`.")
    objective: Literal["latency", "size"] = Field(
        "latency", description="What to minimise: p50 latency at `batch_size`, or the size of the file.")
    max_accuracy_drop: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest allowed drop of the metric against the model the pass receives "
        "(absolute: 0.01 is one accuracy point, or 0.01 of cosine fidelity).",
    )  # fmt: skip
    metric: Literal["accuracy", "fidelity"] | None = Field(
        None, description="`accuracy` (needs labels) or `fidelity` (mean cosine of the outputs to the original's); "
        "default: accuracy when the eval dataset has labels, else fidelity.",
    )  # fmt: skip
    budget: AutoBudget = Field(default_factory=AutoBudget, description="When the search stops: a number of "
                               "trials or of minutes, whichever comes first.")
    allowed: list[SearchablePass] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED), min_length=1,
        description="Pass types recipes may use: `quantize` (int8, fp16 and int4 modes), `prune` (magnitude "
        "sparsities; with train_dataset_id also structured pruning with fine-tuning), `distill` (a student of half "
        "the width, distilled on train_dataset_id; needs one).",
    )  # fmt: skip
    batch_size: int = Field(8, ge=1, le=1024, description="Batch size trials are timed at (objective `latency`).")
    num_samples: int = Field(1024, ge=16, le=100_000, description="Eval rows each trial is measured on.")

    def check(self, context: SubmitContext) -> Problems:
        """Submit-time checks: the search measures every trial on the eval dataset; distillation alone needs the
        train dataset (with other passes allowed, the training recipes are skipped with a note)."""
        problems: Problems = []
        if set(self.allowed) == {"distill"} and context.train is None:
            problems.append((("allowed",), "distill trains a student on data: give train_dataset_id, or allow "
                             "quantize or prune too"))
        if context.eval is None:
            problems.append((("max_accuracy_drop",), "auto measures every trial on the eval dataset: give "
                             "eval_dataset_id"))
        elif self.metric == "accuracy" and not context.eval.get("has_labels"):
            problems.append((("metric",), "metric 'accuracy' needs an eval dataset with labels; give one with "
                             "labels or use metric 'fidelity'"))
        return problems

    def representation_problem(self, representation: str) -> str | None:
        if representation != "onnx":
            return "auto searches ONNX recipes: ask for 'onnx' output (a PyTorch model is exported first)"
        return None
