"""Configs of the `finetune` pass (one per `method`) and the training settings it shares with `distill`.

No heavy imports: the API imports this module to validate job specs. The submit-time checks use the model's
stored inspection and the dataset infos (:class:`deepopt_core.passes.base.SubmitContext`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from deepopt_core.passes.base import PassConfig, SubmitContext

Problems = list[tuple[tuple[str | int, ...], str]]

# Leaf module names of the Hugging Face families whose adapters get defaults, relative to the base model and
# with layer indices as 0; used to check `target_modules` at submit (torch.export/TorchScript names are only
# known when the model is loaded, so those are checked when the job runs).
_BERT_NAMES = [
    "embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings",
    "embeddings.LayerNorm", "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
    "encoder.layer.0.attention.self.value", "encoder.layer.0.attention.output.dense",
    "encoder.layer.0.attention.output.LayerNorm", "encoder.layer.0.intermediate.dense",
    "encoder.layer.0.output.dense", "encoder.layer.0.output.LayerNorm", "pooler.dense", "classifier",
]  # fmt: skip
_DISTILBERT_NAMES = [
    "embeddings.word_embeddings", "embeddings.position_embeddings", "transformer.layer.0.attention.q_lin",
    "transformer.layer.0.attention.k_lin", "transformer.layer.0.attention.v_lin",
    "transformer.layer.0.attention.out_lin", "transformer.layer.0.ffn.lin1", "transformer.layer.0.ffn.lin2",
    "pre_classifier", "classifier",
]  # fmt: skip
KNOWN_MODULES: dict[str, list[str]] = {
    "bert": _BERT_NAMES, "roberta": _BERT_NAMES, "xlm-roberta": _BERT_NAMES, "camembert": _BERT_NAMES,
    "electra": _BERT_NAMES, "distilbert": _DISTILBERT_NAMES,
}  # fmt: skip
DEFAULT_TARGETS: dict[str, dict[str, list[str]]] = {
    # LoRA on the query and value projections (Hu et al., 2021); bottleneck adapters after the attention and
    # feed-forward output projections (Houlsby et al., 2019; LLM-Adapters, Hu et al., 2023).
    "bert": {"lora": ["query", "value"], "adapter": ["output.dense"]},
    "distilbert": {"lora": ["q_lin", "v_lin"], "adapter": ["out_lin", "lin2"]},
    "gpt2": {"lora": ["c_attn"], "adapter": ["c_proj"]},
    "llama": {"lora": ["q_proj", "v_proj"], "adapter": ["down_proj"]},
}
for _family in ("roberta", "xlm-roberta", "camembert", "electra"):
    DEFAULT_TARGETS[_family] = DEFAULT_TARGETS["bert"]
for _family in ("mistral", "qwen2", "qwen3", "gemma", "phi3"):
    DEFAULT_TARGETS[_family] = DEFAULT_TARGETS["llama"]
PREFIX_FAMILIES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})


def matches(name: str, target: str) -> bool:
    """PEFT's rule for one `target_modules` entry: the module name equals it or ends with ``"." + target``."""
    return name == target or name.endswith("." + target)


def _normalized(target: str) -> str:
    return ".".join("0" if part.isdigit() else part for part in target.split("."))


class TrainingConfig(PassConfig):
    """Settings of a training loop, shared by `finetune` and `distill`.

    Training runs `epochs` passes over the training split, or stops at `max_steps` optimizer steps, whichever
    comes first (3 epochs when neither is given). Mixed precision follows Micikevicius et al., 2018
    (https://arxiv.org/abs/1710.03740); gradient checkpointing Chen et al., 2016 (https://arxiv.org/abs/1604.06174).
    """

    epochs: int | None = Field(None, ge=1, le=1000, description="Passes over the training data (default 3).")
    max_steps: int | None = Field(None, ge=1, le=1_000_000, description="Stop after this many optimizer steps.")
    lr: float | None = Field(None, gt=0, le=1.0, description="Peak learning rate of AdamW; default per method.")
    batch_size: int = Field(32, ge=1, le=4096, description="Rows per forward pass.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW's decoupled weight decay.")
    warmup_ratio: float = Field(0.0, ge=0, le=0.5, description="Linear warm-up share of the steps, then linear decay.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Batches whose gradients add up to one optimizer step (a larger effective "
        "batch in the same memory).")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast dtype of forward passes (fp16 uses a gradient scaler).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (HF models).")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=1000, description="Stop after this many evaluations on the held-out split without a better "
        "loss, and keep the best weights; None trains to the end.")
    validation_split: float = Field(0.1, ge=0.0, le=0.5, description="Share of the training rows held out.")
    eval_every: int | None = Field(None, ge=1, description="Optimizer steps between held-out evaluations "
                                   "(default: about 10 per run).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this global norm.")
    max_length: int = Field(128, ge=2, le=4096, description="Token limit when tokenizing .jsonl text.")
    seed: int = Field(0, ge=0, description="Seed of the held-out split, the shuffling and any new weights.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train; auto: cuda when present.")

    def _training_problems(self, context: SubmitContext, *, needs_labels: bool) -> Problems:
        train = context.train
        if train is None:
            return [((), f"{self.type!r} trains on data: give train_dataset_id")]  # type: ignore[attr-defined]
        problems: Problems = []
        if needs_labels and not train.get("has_labels"):
            problems.append(((), "the training dataset has no labels (`labels` array or \"label\" field)"))
        if train.get("format") == "jsonl":
            if context.model.get("format") != "hf":
                problems.append(((), "text (.jsonl) training data needs a Hugging Face model"))
            elif not (context.model.get("details") or {}).get("has_tokenizer"):
                from deepopt_core.datasets import NO_TOKENIZER

                problems.append(((), NO_TOKENIZER))
        return problems


def _output_fits_labels(context: SubmitContext, task: str) -> Problems:
    """A TorchScript or .pt2 model trains on its own output (no head can be put on it): per-row class scores for
    integer labels (one more dim than the labels), per-row values for float labels."""
    train = context.train or {}
    labels = (train.get("arrays") or {}).get("labels")
    outputs = context.model.get("outputs") or []
    if not labels or not outputs or not isinstance(outputs[0], dict) or not isinstance(outputs[0].get("shape"), list):
        return []
    shape = outputs[0]["shape"]
    regression = task == "regression" or (task == "auto" and str((train.get("dtypes") or {}).get(
        "labels", "")).startswith("float"))
    fits = len(shape) in (len(labels), len(labels) + 1) if regression else len(shape) == len(labels) + 1
    if fits:
        return []
    kind = "values" if regression else "class scores"
    return [((), f"the model's output {outputs[0].get('name', '')!r} has shape {shape}, not per-row {kind} for "
             f"labels of shape {labels}: a {context.model.get('format')} model trains on its own output (no "
             "head can be added to it); export it with its task head, or upload the Hugging Face folder, which "
             "gets one")]


# Hugging Face families whose code reads conv attributes (stride, kernel size) that a LoRA conv does not expose.
TF_PADDED_CONVS = frozenset({"mobilenet_v1", "mobilenet_v2"})


class _FinetuneBase(TrainingConfig):
    type: Literal["finetune"] = Field("finetune", description="The pass: `finetune`; `method` selects the variant.")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="auto: regression for float `labels` in .npz, classification otherwise.")
    num_labels: int | None = Field(None, ge=1, le=100_000, description="Classes (default: from the data).")
    head: Literal["auto", "keep", "new"] = Field(
        "auto", description="Hugging Face models: `new` puts a fresh classification/regression head on the base; "
        "`auto` keeps a head that fits the labels and adds one otherwise.")
    pad_token_id: int | None = Field(
        None, ge=0, description="Hugging Face decoders (GPT-2, Llama, Qwen2): the token id that pads the rows, for "
        "a classification head that reads each row's last other token; default the model's pad token, else its "
        "end-of-sequence token.")

    def check(self, context: SubmitContext) -> Problems:
        """Submit-time checks: labelled training data the model can read, adapters on a rewritable model, a pad
        token for a decoder's classification head."""
        problems = self._training_problems(context, needs_labels=True)
        fmt = context.model.get("format")
        details = context.model.get("details") or {}
        # Inspections from before the token ids were recorded lack the keys; those are checked when the job runs.
        no_pad_known = "eos_token_id" in details and details.get("pad_token_id") is None and details.get(
            "eos_token_id") is None and not details.get("has_tokenizer")
        if fmt == "hf" and details.get("task") == "text-generation" and no_pad_known and self.pad_token_id is None:
            problems.append((("pad_token_id",), "a decoder's classification head reads each row's last token that "
                             "is not padding, and this model's config names no pad_token_id or eos_token_id (and "
                             "it has no tokenizer): give pad_token_id, the id that pads the training rows"))
        method = getattr(self, "method", "full")
        if fmt == "torchscript" and method != "full":
            problems.append((("method",), f"{method!r} inserts modules, which a TorchScript model cannot take; "
                             "upload a torch.export (.pt2) or Hugging Face model, or use method 'full'"))
        if fmt == "hf" and method == "lora" and details.get("model_type") in TF_PADDED_CONVS:
            problems.append((("method",), "transformers' MobileNets pad TF-style by reading each conv's stride, "
                             "which PEFT's LoRA wrapper of a conv hides, and their one Linear is the head: use "
                             "method 'full', or upload the model as a torch.export (.pt2) program"))
        if self.task == "regression" and (context.train or {}).get("format") == "jsonl":
            problems.append((("task",), "regression needs float `labels` in an .npz training dataset"))
        if fmt in ("torchscript", "torch_export"):
            problems += _output_fits_labels(context, self.task)
        return problems

    def output_problem(self, fmt: str) -> str | None:
        """Why the fine-tuned PyTorch model cannot be saved as `fmt`, or None (checked by the planner)."""
        method = getattr(self, "method", "full")
        separate = method in ("adapter_series", "adapter_parallel", "prefix") or (
            method == "lora" and not getattr(self, "merge", True))
        if fmt == "hf" and separate:
            return (f"{method!r}{' with merge: false' if method == 'lora' else ''} keeps layers that a Hugging Face "
                    "folder cannot hold; ask for onnx/torchscript/torch_export outputs (the adapter artifact "
                    "holds the adapter alone)")
        return None

    def target_problems(self, context: SubmitContext, targets: list[str] | None) -> Problems:
        """`target_modules` that match no module of a Hugging Face family whose module names are known."""
        if not targets or targets == ["all-linear"]:
            return []
        names = KNOWN_MODULES.get(str((context.model.get("details") or {}).get("model_type")))
        if names is None:
            return []
        missing = [t for t in targets if not any(matches(n, _normalized(t)) for n in names)]
        if missing:
            return [(("target_modules",), f"{missing} match no module of this model; modules are named like "
                     f"{[n.rsplit('.', 2)[-2] + '.' + n.rsplit('.', 1)[-1] if '.' in n else n for n in names[4:9]]}")]
        return []


class LoraFinetuneConfig(_FinetuneBase):
    """LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) through Hugging Face PEFT on Linear, Conv and
    Embedding layers; with `base_quantization`, the frozen base is weight-quantized under the adapters as in
    QLoRA (Dettmers et al., 2023, https://arxiv.org/abs/2305.14314)."""

    method: Literal["lora"] = Field("lora", description="Low-rank adapters beside the frozen weights.")
    r: int = Field(8, ge=1, le=1024, description="Rank of the update B·A.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator: the update is alpha / r · B·A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None, description="Module names (suffix match, as PEFT) or ['all-linear']; default per architecture.")
    base_quantization: Literal["int8", "int4"] | None = Field(
        None, description="Freeze a weight-quantized base (symmetric, per channel; int4 in groups of 32).")
    merge: bool = Field(True, description="Fold the trained update into the base weights of the model outputs "
                        "(dequantize, merge, requantize for a quantized base); false keeps it as separate layers.")

    def check(self, context: SubmitContext) -> Problems:
        return [*super().check(context), *self.target_problems(context, self.target_modules)]


class _AdapterBase(_FinetuneBase):
    """Bottleneck adapters as compared in LLM-Adapters (Hu et al., 2023, https://arxiv.org/abs/2304.01933):
    `adapter_series` after a layer's output (Houlsby et al., 2019, https://arxiv.org/abs/1902.00751),
    `adapter_parallel` beside it (He et al., 2022, https://arxiv.org/abs/2110.04366). They cannot be merged into
    the weights: the model outputs carry them."""

    bottleneck_size: int = Field(64, ge=1, le=65536, description="Width of the down-projection.")
    scaling: float = Field(1.0, gt=0, description="Factor on the adapter's output (parallel adapters).")
    target_modules: list[str] | None = Field(None, description="Linear layers to adapt; default per architecture.")

    def check(self, context: SubmitContext) -> Problems:
        return [*super().check(context), *self.target_problems(context, self.target_modules)]


class SeriesAdapterFinetuneConfig(_AdapterBase):
    __doc__ = _AdapterBase.__doc__
    method: Literal["adapter_series"] = Field("adapter_series", description="Bottleneck adapters after layers.")


class ParallelAdapterFinetuneConfig(_AdapterBase):
    __doc__ = _AdapterBase.__doc__
    method: Literal["adapter_parallel"] = Field("adapter_parallel", description="Bottleneck adapters beside "
                                                "layers.")


class PrefixFinetuneConfig(_FinetuneBase):
    """Prefix tuning (Li and Liang, 2021, https://arxiv.org/abs/2101.00190) in its deep form (P-Tuning v2, Liu
    et al., 2022, https://arxiv.org/abs/2110.07602): trained key/value vectors prepended to every self-attention
    layer of a BERT-family encoder. PEFT's prefix tuning needs a model that takes past key values, which the
    transformers encoders no longer do, so it is implemented here as an attention function."""

    method: Literal["prefix"] = Field("prefix", description="Trained key/value prefixes in every attention layer.")
    num_virtual_tokens: int = Field(16, ge=1, le=1024, description="Prefix vectors per attention layer.")

    def check(self, context: SubmitContext) -> Problems:
        problems = super().check(context)
        family = (context.model.get("details") or {}).get("model_type")
        if context.model.get("format") != "hf" or family not in PREFIX_FAMILIES:
            problems.append((("method",), f"prefix tuning needs a Hugging Face encoder of {sorted(PREFIX_FAMILIES)}"))
        return problems


class FullFinetuneConfig(_FinetuneBase):
    """Full fine-tuning: every parameter trains (the reference the adapter methods are compared with)."""

    method: Literal["full"] = Field("full", description="Every parameter trains.")


# The first is the default when `method` is omitted.
FINETUNE_CONFIGS: list[type[PassConfig]] = [
    LoraFinetuneConfig, SeriesAdapterFinetuneConfig, ParallelAdapterFinetuneConfig, PrefixFinetuneConfig,
    FullFinetuneConfig,
]  # fmt: skip


def default_targets(model_type: str | None, kind: str) -> list[str] | None:
    """Default `target_modules` of a Hugging Face family for `kind` ("lora" or "adapter"), or None."""
    return (DEFAULT_TARGETS.get(str(model_type)) or {}).get(kind)


def describe(spec: Any) -> dict[str, Any]:
    """The spec as recorded in decisions (no defaults hidden)."""
    return {k: v for k, v in spec.model_dump().items() if k not in ("type", "version")}

