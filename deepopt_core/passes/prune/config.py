"""Configs of the `prune` pass, one per method, discriminated by `method`. No heavy imports: the API imports this.

Every method takes `targets` / `exclude` (layer names or globs; embeddings and the classifier head stay dense by
default) and `fine_tune` (recovery on the job's `train_dataset_id` after pruning, and between the steps of a
`schedule`). Checks that need the model's stored inspection or the job's datasets run at submit time (`check`, a
422 naming `passes.N.<field>`); methods that need a PyTorch model say so to the planner (`representations`), which
converts an ONNX upload to torch for them (`accepts_onnx_import`, :mod:`deepopt_core.formats.onnx_torch`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepopt_core.passes.base import PassConfig, SubmitContext
from deepopt_core.passes.prune.layouts import BERT_FAMILY, FFN_MODEL_TYPES, TRACED_UNITS

Problems = list[tuple[tuple[str | int, ...], str]]

# Layers with a weight matrix, as the stored inspection names them: ONNX ops, TorchScript module kinds, aten ops.
_LINEAR = ("Linear", "aten.linear", "MatMul", "Gemm")
_CONV = ("Conv1d", "Conv2d", "Conv3d", "aten.conv1d", "aten.conv2d", "aten.conv3d", "Conv")

_TARGETS = ("Layer names or globs to prune (module names such as `fc1`, `encoder.layer.*.output.dense`, or "
            "ONNX node/initializer names); default: every Linear/Conv (MatMul/Gemm/Conv) layer.")
_EXCLUDE = "Layer names or globs to leave dense (besides embeddings, and the classifier head unless targeted)."
_FINE_TUNE = ("Recover after pruning (and after every step of a `schedule`) on the job's `train_dataset_id`, with "
              "the pruned weights held at zero; None: no recovery.")


class FineTuneSettings(BaseModel):
    """Recovery after pruning: Adam on the train data with pruned weights held at zero.

    `method: task` trains on the labels (cross-entropy), `distill` matches the unpruned model's outputs (Hinton et
    al., 2015, https://arxiv.org/abs/1503.02531), `auto` is `task` when the train data has labels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(1, ge=1, le=100, description="Passes over the train data (after every schedule step).")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate.")
    method: Literal["auto", "task", "distill"] = Field(
        "auto", description="`task` (labels), `distill` (match the unpruned model) or `auto`.")
    batch_size: int = Field(32, ge=1, le=4096, description="Rows per recovery step.")


class Schedule(BaseModel):
    """Gradual pruning on the cubic schedule of Zhu & Gupta, 2017 (https://arxiv.org/abs/1710.01878): sparsity
    rises from `initial_sparsity` to the target over `steps` pruning steps, with `fine_tune` after each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(..., ge=1, le=100, description="Pruning steps (1: one-shot).")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="Sparsity of the first step's start.")


class _PruneBase(PassConfig):
    type: Literal["prune"] = Field("prune", description="The pass: `prune`; `method` selects the variant.")
    targets: list[str] | None = Field(None, description=_TARGETS)
    exclude: list[str] = Field(default_factory=list, description=_EXCLUDE)
    keep_head: bool = Field(True, description="Leave the classifier head dense (layers named like `classifier`, "
                            "`lm_head`, `head`, poolers, else the last Linear) unless `targets` names it.")
    fine_tune: FineTuneSettings | None = Field(None, description=_FINE_TUNE)

    # An ONNX model is converted to torch for the settings that need PyTorch, and exported back afterwards.
    accepts_onnx_import: ClassVar[bool] = True

    def representations(self) -> tuple[str, ...]:
        """The representations these settings run on (the planner exports to ONNX only after them)."""
        return ("onnx", "torch")

    def _data_problems(self, context: SubmitContext) -> Problems:
        problems: Problems = []
        if context.model.get("prunable_layers", 1) == 0:
            field = "sparsity" if "sparsity" in type(self).model_fields else "method"
            problems.append(((field,), "the model has no Linear/Conv (MatMul/Gemm/Conv) weights to prune"))
        if self.fine_tune is not None:
            if context.train is None:
                problems.append((("fine_tune",), "fine-tuning trains on data: give train_dataset_id"))
            elif self.fine_tune.method == "task" and not context.train.get("has_labels"):
                problems.append((("fine_tune", "method"), "fine_tune method 'task' needs labels in the train data; "
                                 "use 'distill' or 'auto'"))
            elif context.train.get("format") == "jsonl" and context.model.get("format") != "hf":
                problems.append((("fine_tune",), "text (.jsonl) train data needs a Hugging Face model"))
            elif context.train.get("format") == "jsonl" and not (context.model.get("details") or {}).get(
                    "has_tokenizer"):
                from deepopt_core.datasets import NO_TOKENIZER

                problems.append((("fine_tune",), f"train data: {NO_TOKENIZER}"))
        return problems

    def _torch_only(self, context: SubmitContext, field: str, why: str,
                    formats: tuple[str, ...] = ("torch_export", "hf", "onnx")) -> Problems:
        fmt = context.model.get("format")
        if fmt not in formats:
            names = {"torchscript": "TorchScript", "torch_export": "torch.export (.pt2)", "hf": "Hugging Face",
                     "onnx": "ONNX (converted to torch)"}
            known = [names[f] for f in formats]
            allowed = ", ".join(known[:-1]) + " or " + known[-1] if len(known) > 1 else known[0]
            return [((field,), f"{why} needs a {allowed} model; this one is {names.get(str(fmt), 'ONNX')}")]
        if fmt == "onnx":
            from deepopt_core.planning import onnx_import_problem

            shapes = [t.get("shape") for t in context.model.get("inputs") or [] if isinstance(t, dict)]
            problem = onnx_import_problem(context.model.get("op_types") or {}, shapes, context.model.get("opset"))
            if problem is not None:
                return [((field,), f"{why} runs on PyTorch, but {problem}")]
        return []


class MagnitudePruneConfig(_PruneBase):
    """Unstructured magnitude pruning of the weights of Linear/Conv (PyTorch) or MatMul/Gemm/Conv (ONNX).

    `scope="global"` ranks all prunable weights together; `"layer"` prunes each layer to the same sparsity. With a
    `schedule`, sparsity rises on the cubic schedule with `fine_tune` between steps (gradual magnitude pruning,
    Zhu & Gupta, 2017, https://arxiv.org/abs/1710.01878). Paper: Han et al., 2015, https://arxiv.org/abs/1506.02626
    """

    method: Literal["magnitude"] = Field("magnitude", description="Unstructured pruning of the smallest weights.")
    sparsity: float = Field(..., ge=0.0, lt=1.0, description="Fraction of prunable weights set to zero.")
    scope: Literal["global", "layer"] = Field(
        "global", description="`global`: one ranking of all prunable weights, so thin layers keep more of theirs; "
        "`layer`: every layer to the same sparsity.")
    keep_head: bool = Field(False, description="Leave the classifier head dense (the one-shot default of the "
                            "first release prunes it too).")
    schedule: Schedule | None = Field(None, description="Gradual pruning (needs `fine_tune`); None: one-shot.")

    def representations(self) -> tuple[str, ...]:
        return ("torch",) if self.fine_tune is not None or self.schedule is not None else ("onnx", "torch")

    def check(self, context: SubmitContext) -> Problems:
        """Submit-time check: prunable weights; fine-tuning and schedules need train data and a PyTorch model."""
        problems = self._data_problems(context)
        if self.schedule is not None and self.schedule.steps > 1 and self.fine_tune is None:
            problems.append((("schedule",), "a schedule fine-tunes between its steps: give fine_tune"))
        if self.fine_tune is not None:
            problems += self._torch_only(context, "fine_tune", "fine-tuning",
                                         ("torchscript", "torch_export", "hf", "onnx"))
        return problems


class ObsPruneConfig(_PruneBase):
    """Second-order unstructured pruning in the style of the Optimal BERT Surgeon.

    `hessian: fisher`: a block-diagonal inverse empirical Fisher (blocks of `block_size` weights, `num_gradients`
    per-sample gradients on the calibration data, else the train data) ranks weights by the OBS saliency
    ``w^2 / (2 [F^-1]_qq)``; the remaining weights of each block get the optimal update (Kurtic et al., 2022,
    https://arxiv.org/abs/2203.07259). `hessian: inputs`: the same saliency and update with each layer's exact
    Hessian of its output error, ``2 X X^T`` over the layer's calibration inputs, layers pruned in forward order
    (OBC / SparseGPT, Frantar & Alistarh, https://arxiv.org/abs/2301.00774): no gradients, one forward pass per
    layer, and the better one-shot choice without fine-tuning (see the pruning benchmark). One-shot, or gradual
    with a `schedule` (a fresh Hessian at every step). Runs on a torch.export or Hugging Face model, or on an ONNX
    model converted to torch and exported back.
    """

    method: Literal["obs"] = Field("obs", description="Second-order pruning (Optimal Brain Surgeon saliency).")
    sparsity: float = Field(..., ge=0.0, lt=1.0, description="Fraction of the pruned layers' weights set to zero.")
    scope: Literal["global", "layer"] = Field(
        "layer", description="`layer`: every layer to the same sparsity; `global`: saliencies ranked across layers.")
    hessian: Literal["fisher", "inputs"] = Field(
        "fisher", description="`fisher`: block-diagonal empirical Fisher from per-sample gradients (oBERT); "
        "`inputs`: each layer's exact Hessian 2XX^T of its output error on the calibration inputs (SparseGPT; "
        "with `scope: global` the layers' sparsities come from a global magnitude ranking).")
    block_size: int = Field(32, ge=4, le=256, description="Weights per Fisher block (memory: weights x block_size).")
    num_gradients: int = Field(128, ge=4, le=16_384, description="Per-sample gradients in each Fisher; with "
                               "`hessian: inputs`, the calibration samples whose inputs form the Hessians.")
    dampening: float = Field(1e-2, gt=0, le=10.0, description="Hessian dampening, relative to its mean diagonal.")
    update: Literal["sequential", "multi"] = Field(
        "sequential", description="`sequential`: greedy one weight at a time with OBS updates (OBC); `multi`: "
        "oBERT's closed-form update of each block (`hessian: fisher`).")
    schedule: Schedule | None = Field(None, description="Gradual pruning; None: one-shot.")

    def representations(self) -> tuple[str, ...]:
        return ("torch",)

    def check(self, context: SubmitContext) -> Problems:
        problems = self._data_problems(context)
        if context.calibration is None and context.train is None:
            problems.append((("method",), "obs estimates the Hessian on data: give calibration_dataset_id or "
                             "train_dataset_id"))
        if self.schedule is not None and self.schedule.steps > 1 and self.fine_tune is None:
            problems.append((("schedule",), "a schedule fine-tunes between its steps: give fine_tune"))
        return problems + self._torch_only(context, "method", "obs (gradients of layer outputs)")


class NMPruneConfig(_PruneBase):
    """N:M semi-structured sparsity: at most `n` nonzeros in every group of `m` consecutive weights along the input
    dimension (2:4 is what NVIDIA Ampere sparse tensor cores run), verified on every pruned weight. Kept weights
    chosen by magnitude (ONNX and PyTorch) or by OBS saliency with the OBS update (`selection: obs`, PyTorch).
    Mishra et al., 2021, https://arxiv.org/abs/2104.08378
    """

    method: Literal["nm"] = Field("nm", description="N:M semi-structured sparsity.")
    n: int = Field(2, ge=1, le=63, description="Nonzeros kept per group.")
    m: int = Field(4, ge=2, le=64, description="Group size along the input dimension.")
    selection: Literal["magnitude", "obs"] = Field("magnitude", description="How the kept weights are chosen.")
    hessian: Literal["fisher", "inputs"] = Field(
        "fisher", description="OBS selection: block-diagonal empirical Fisher (`fisher`) or each layer's input "
        "Hessian (`inputs`, SparseGPT; the Fisher settings are then unused).")
    block_size: int = Field(32, ge=4, le=256, description="OBS selection: Fisher block (rounded to a multiple of m).")
    num_gradients: int = Field(128, ge=4, le=16_384, description="OBS selection: per-sample gradients.")
    dampening: float = Field(1e-2, gt=0, le=10.0, description="OBS selection: relative Fisher dampening.")

    @model_validator(mode="after")
    def _n_below_m(self) -> NMPruneConfig:
        if self.n >= self.m:
            raise ValueError(f"n must be smaller than m (got {self.n}:{self.m}: nothing would be pruned)")
        return self

    def representations(self) -> tuple[str, ...]:
        return ("torch",) if self.selection == "obs" or self.fine_tune is not None else ("onnx", "torch")

    def check(self, context: SubmitContext) -> Problems:
        problems = self._data_problems(context)
        if self.selection == "obs":
            if context.calibration is None and context.train is None:
                problems.append((("selection",), "OBS selection needs data: give calibration_dataset_id or "
                                 "train_dataset_id"))
            problems += self._torch_only(context, "selection", "OBS selection")
        if self.fine_tune is not None:
            problems += self._torch_only(context, "fine_tune", "fine-tuning",
                                         ("torchscript", "torch_export", "hf", "onnx"))
        return problems


class StructuredPruneConfig(_PruneBase):
    """Structured pruning: remove whole units and rebuild smaller dense layers, so parameters and latency drop.

    Units: `channels` (Conv output channels, with their BatchNorm entries), `neurons` (Linear outputs feeding
    another Linear), `heads` (attention heads) and `ffn` (transformer feed-forward neurons) of Hugging Face
    BERT-family models and plain torch blocks. Ranked by `magnitude` (Li et al., 2017,
    https://arxiv.org/abs/1608.08710), first-order `taylor` (Molchanov et al., 2019,
    https://arxiv.org/abs/1906.10771) or second-order `fisher` (Kwon et al., 2022, https://arxiv.org/abs/2204.09656)
    importance on the calibration (else train) data; `fine_tune` recovers by task training or distillation.
    Runs on a torch.export or Hugging Face model, or on an ONNX model converted to torch (Linear/Conv chains).
    """

    method: Literal["structured"] = Field("structured", description="Remove whole units, rebuild smaller layers.")
    sparsity: float = Field(..., ge=0.0, lt=1.0, description="Fraction of the units of each kind removed.")
    units: list[Literal["channels", "neurons", "heads", "ffn"]] | None = Field(
        None, min_length=1, description="Unit kinds to remove; default: every kind the model has.")
    importance: Literal["magnitude", "taylor", "fisher"] = Field(
        "magnitude", description="How units are ranked; `taylor` and `fisher` need calibration or train data.")
    scope: Literal["layer", "global"] = Field(
        "layer", description="`layer`: the fraction in every layer; `global`: ranked across layers of a kind.")
    round_to: int = Field(1, ge=1, le=256, description="Kept units per layer rounded up to a multiple of this.")
    reconstruct: bool = Field(
        False, description="Refit each rebuilt Linear by least squares to the unpruned model's outputs on the "
        "calibration data (Hugging Face models).")

    def representations(self) -> tuple[str, ...]:
        return ("torch",)

    def check(self, context: SubmitContext) -> Problems:
        problems = self._data_problems(context)
        problems += self._torch_only(context, "method", "structured pruning (rebuilding layers)")
        if context.model.get("format") not in ("hf", "torch_export", "onnx"):
            return problems
        no_data = context.calibration is None and context.train is None
        if no_data and self.importance != "magnitude":
            problems.append((("importance",), f"{self.importance} importance needs data: give "
                             "calibration_dataset_id or train_dataset_id"))
        if no_data and self.reconstruct:
            problems.append((("reconstruct",), "reconstruct needs data: give calibration_dataset_id or "
                             "train_dataset_id"))
        found = self.available_units(context.model)
        wanted = set(self.units or found)
        if not found:
            problems.append((("method",), "the model has no prunable structure: structured pruning needs two "
                             "consecutive Linear/Conv layers (a .pt2 or ONNX upload, or a Hugging Face "
                             f"{sorted(TRACED_UNITS)}), attention/FFN blocks of a BERT-family model, or the FFN "
                             f"blocks of {sorted(FFN_MODEL_TYPES)} models"))
        elif wanted - found:
            problems.append((("units",), f"the model has no {sorted(wanted - found)} to prune; it has "
                             f"{sorted(found)}"))
        elif self.units is None and "hf" in (context.outputs or ()):
            # The units found on this model are the ones pruned: whether a Hugging Face config can describe the
            # result depends on them (`output_problem` sees only units named in the spec).
            message = self._hf_problem(found)
            if message:
                problems.append(((), message))
        return problems

    @staticmethod
    def available_units(model: dict[str, object]) -> set[str]:
        """Unit kinds the stored inspection shows (approximate: chains are confirmed when the job runs)."""
        fmt = model.get("format")
        details = model.get("details") or {}
        if fmt == "hf":
            kind = details.get("model_type") if isinstance(details, dict) else None
            if kind in BERT_FAMILY:
                return {"heads", "ffn"}
            if kind in TRACED_UNITS:
                return set(TRACED_UNITS[str(kind)])
            return {"ffn"} if kind in FFN_MODEL_TYPES else set()
        ops = model.get("op_types") or {}
        if not isinstance(ops, dict):
            return set()
        linear = sum(int(ops.get(k, 0)) for k in _LINEAR)
        conv = sum(int(ops.get(k, 0)) for k in _CONV)
        found = set()
        if linear >= 2:
            found.add("neurons")
        if conv >= 1 and conv + linear >= 2:
            found.add("channels")
        return found

    def output_problem(self, output_format: str) -> str | None:
        if output_format != "hf":
            return None
        # Without units in the spec, `check` judges the units found on the model; only the scope is known here.
        return self._hf_problem(set(self.units or ()))

    def _hf_problem(self, units: set[str]) -> str | None:
        """Why `units` pruned with this scope cannot be saved as a Hugging Face model, or None."""
        if units & {"channels", "neurons"}:
            return ("structured pruning of channels or neurons changes layer widths that a Hugging Face config "
                    "does not describe; ask for 'onnx', 'torchscript' or 'torch_export' output")
        if "heads" in units:
            return ("structured pruning of attention heads leaves layers with different head counts, which a "
                    "Hugging Face config cannot describe; ask for 'onnx', 'torchscript' or 'torch_export' "
                    "output, or prune units ['ffn'] with scope 'layer'")
        if self.scope == "global":
            return ("structured pruning with scope 'global' leaves layers of different widths, which a Hugging "
                    "Face config cannot describe; ask for 'onnx', 'torchscript' or 'torch_export' output, or "
                    "use scope 'layer'")
        return None


# The first is the default when `method` is omitted.
PRUNE_CONFIGS: list[type[PassConfig]] = [MagnitudePruneConfig, ObsPruneConfig, NMPruneConfig, StructuredPruneConfig]
