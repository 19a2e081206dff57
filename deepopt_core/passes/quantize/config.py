"""Configs of the `quantize` pass, one per mode, discriminated by `mode`.

Every field is documented: the descriptions become the job schema of the OpenAPI spec. Checks that need the
model's facts or the job's datasets run at submit time (`check`, a 422 naming `passes.N.<field>`); settings that
cannot run on a representation are refused by the planner (`representation_problem`), and settings whose result
cannot be saved in an output format by `output_problem`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepopt_core.passes.base import PassConfig, SubmitContext

Problems = list[tuple[tuple[str | int, ...], str]]
Fusion = Literal["auto", "full", "no_attention", "none"]

# Op types (ONNX), module kinds (TorchScript) and aten ops (torch.export) of layers with a weight matrix that
# weight-only quantization stores in 4 or 8 bits.
_MATMUL_KINDS = frozenset({"MatMul", "Gemm", "Linear", "NonDynamicallyQuantizableLinear", "aten.linear"})

_EXCLUDE = (
    "Node names, op types or glob patterns of nodes to leave in float (ONNX; layer names such as `fc1` and weight "
    "names such as `fc1.weight` work too), or layer names (PyTorch)."
)
_FUSION = (
    "ONNX Runtime transformer fusion before quantizing: `auto` (none: measured faster once quantized), `full`, "
    "`no_attention` (LayerNorm/GELU fused, attention left as MatMuls) or `none`. ONNX only."
)
_PREPROCESS = (
    "Run ONNX Runtime's quantization pre-processing first (fusion, offline basic graph optimization, shape "
    "inference), so that quantization lands on the fused ops. ONNX only."
)


class AccuracyGuard(BaseModel):
    """Keep the quality drop of a quantized model within bounds by returning the most sensitive layers to float.

    With the job's eval dataset, each quantized layer's sensitivity is measured (the drop of the model where only
    that layer is quantized); the fewest, most sensitive layers then go back to float until the drop is at most
    `max_drop`. The decisions list the layers left in float and the measured drops. Wu et al., 2020, section 4.3,
    https://arxiv.org/abs/2004.09602
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_drop: float = Field(
        ..., ge=0.0, le=1.0, description="Largest allowed drop of the metric against the unquantized model "
        "(absolute: 0.01 is one accuracy point, or 0.01 of cosine fidelity).",
    )  # fmt: skip
    max_fallback: int | None = Field(
        None, ge=1, le=10_000, description="Most layers the guard may return to float; default: as many as needed."
    )
    metric: Literal["accuracy", "fidelity"] = Field(
        "accuracy", description="`accuracy`: top-1 accuracy on the eval dataset's labels (needs labels); "
        "`fidelity`: mean cosine similarity of the outputs to the unquantized model's.",
    )  # fmt: skip
    num_samples: int = Field(512, ge=1, le=100_000, description="Eval rows the guard measures on (the first ones).")


class _QuantizeConfig(PassConfig):
    """What every quantize mode shares."""

    type: Literal["quantize"] = Field("quantize", description="The pass: `quantize`; `mode` selects the variant.")
    exclude: list[str] = Field(default_factory=list, description=_EXCLUDE)

    def _guard_problems(self, context: SubmitContext) -> Problems:
        guard: AccuracyGuard | None = getattr(self, "accuracy_guard", None)
        if guard is None:
            return []
        if context.eval is None:
            return [(("accuracy_guard",), "the accuracy guard measures on the eval dataset: give eval_dataset_id")]
        if guard.metric == "accuracy" and not context.eval.get("has_labels"):
            return [(("accuracy_guard", "metric"), "metric 'accuracy' needs an eval dataset with labels; give one "
                     "with labels or use metric 'fidelity'")]
        return []

    def check(self, context: SubmitContext) -> Problems:
        """Submit-time checks against the model's facts and the job's datasets."""
        return self._guard_problems(context)

    def representation_problem(self, representation: str) -> str | None:
        """Why these settings cannot run on `representation` ("onnx" or "torch"), or None."""
        if representation == "torch" and getattr(self, "accuracy_guard", None) is not None:
            return f"the accuracy guard of mode {self.mode!r} runs on ONNX models; ask for 'onnx' output"  # type: ignore[attr-defined]
        return None

    def output_problem(self, output_format: str) -> str | None:
        """Why a PyTorch model quantized with these settings cannot be saved as `output_format`, or None."""
        return None


class DynamicQuantizeConfig(_QuantizeConfig):
    """Dynamic int8 quantization: int8 weights, activations quantized on the fly at run time.

    ONNX models go through ONNX Runtime's pre-processing and quantizer; PyTorch models through torch's dynamic
    quantization of Linear layers. Paper: Jacob et al., 2018, https://arxiv.org/abs/1712.05877
    """

    mode: Literal["dynamic"] = Field("dynamic", description="Weights int8/uint8, activations quantized per batch.")
    weight_dtype: Literal["int8", "uint8"] = Field("int8", description="Storage type of quantized weights.")
    per_channel: bool | None = Field(
        None, description="One scale per output channel instead of per tensor. Default (null): the measured best "
        "for the model at hand: per channel on transformers (all-MiniLM-L6-v2: cosine fidelity 0.993 against 0.963 "
        "per tensor, same size and speed), per tensor on other models (a digits MLP: 0.9995 against 0.997).",
    )  # fmt: skip
    reduce_range: bool = Field(
        False, description="7-bit weights, for CPUs without VNNI where u8s8 products may saturate. ONNX only."
    )
    fusion: Fusion = Field("auto", description=_FUSION)
    preprocess: bool = Field(True, description=_PREPROCESS)
    accuracy_guard: AccuracyGuard | None = Field(
        None, description="Return the most sensitive layers to float until the drop is within bounds. ONNX only."
    )

    def representation_problem(self, representation: str) -> str | None:
        if representation == "torch" and self.weight_dtype != "int8":
            return "PyTorch dynamic quantization stores int8 weights; weight_dtype 'uint8' needs an ONNX output"
        if representation == "torch" and self.reduce_range:
            return "reduce_range applies to ONNX Runtime's quantizer; ask for 'onnx' output"
        return super().representation_problem(representation)

    def output_problem(self, output_format: str) -> str | None:
        if output_format == "torch_export":
            return ("a PyTorch model quantized with packed int8 weights cannot be saved as a torch.export (.pt2) "
                    "program ('torch_export' output); ask for 'torchscript' or 'onnx' output")
        if output_format == "hf":
            # compressed-tensors' W8A8 quantizes activations per token and symmetric; torch's dynamic Linear per
            # tensor with 7-bit asymmetric ranges, so a W8A8 folder would not compute what the job measured.
            return ("a PyTorch model quantized with dynamic int8 activations cannot be saved as safetensors ('hf' "
                    "output: transformers' int8 activation scheme differs from torch's); ask for 'torchscript' or "
                    "'onnx' output, or use mode 'weight_only' (weight_dtype int8) for 'hf'")
        return None


class StaticQuantizeConfig(_QuantizeConfig):
    """Static int8 quantization of weights and activations, with activation ranges calibrated on the job's
    calibration dataset (`calibration_dataset_id`).

    The graph is pre-processed first; only the inputs of weight-bearing ops (MatMul with a constant weight, Gemm,
    Conv) are quantized on transformers, whose residual stream, LayerNorm, Softmax and attention products stay
    float; CNNs are quantized from Conv to Conv. QDQ MatMuls run as integer kernels on the CPU. ONNX only (a
    PyTorch upload with `"outputs": ["onnx"]` is exported first). Jacob et al., 2018,
    https://arxiv.org/abs/1712.05877; calibration methods as compared by Wu et al., 2020,
    https://arxiv.org/abs/2004.09602
    """

    mode: Literal["static"] = Field("static", description="Weights and activations int8, calibrated ranges.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "percentile", description="How activation ranges are chosen: `minmax` (observed range), `entropy` "
        "(KL divergence) or `percentile` (clip at `percentile` of |activation|).",
    )  # fmt: skip
    percentile: float = Field(
        99.999, ge=90.0, le=100.0, description="The percentile of |activation| kept in range (calibration "
        "`percentile`).",
    )  # fmt: skip
    quant_format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="`qdq`: QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer "
        "kernels; `qoperator`: QLinearMatMul/QLinearConv operators.",
    )  # fmt: skip
    per_channel: bool = Field(True, description="One weight scale per output channel instead of per tensor.")
    symmetric: bool = Field(
        False, description="Symmetric activation ranges (zero point 0); weights are always symmetric."
    )
    activation_dtype: Literal["uint8", "int8"] = Field(
        "uint8", description="Activation type; x86 CPUs run uint8 x int8 products fastest."
    )
    num_samples: int = Field(64, ge=1, le=100_000, description="Calibration rows used (the first ones).")
    fusion: Fusion = Field("auto", description=_FUSION)
    preprocess: bool = Field(True, description=_PREPROCESS)
    accuracy_guard: AccuracyGuard | None = Field(
        None, description="Return the most sensitive layers to float until the drop is within bounds."
    )

    def check(self, context: SubmitContext) -> Problems:
        problems: Problems = []
        if context.calibration is None:
            problems.append((("mode",), "static quantization calibrates activation ranges on data: give "
                             "calibration_dataset_id (arrays named after the model inputs)"))
        return problems + super().check(context)

    def representation_problem(self, representation: str) -> str | None:
        if representation == "torch":
            return ("static quantization runs on ONNX models; ask for 'onnx' output (a PyTorch model is exported "
                    "to ONNX first)")
        return super().representation_problem(representation)


class WeightOnlyQuantizeConfig(_QuantizeConfig):
    """Weight-only quantization: block-wise 4- or 8-bit weights of MatMul/Linear layers, float activations.

    Each block of `block_size` input-channel weights of an output channel gets its own scale. ONNX: MatMul (and
    Gemm) weights become `com.microsoft.MatMulNBits`; PyTorch: each `nn.Linear` keeps int8 or packed int4 weights
    and dequantizes them in its forward (plain aten ops: the saved model loads without this project). For
    transformer and LLM-style MatMul-heavy models. AWQ's clipping search: Lin et al., 2023,
    https://arxiv.org/abs/2306.00978; GPTQ: Frantar et al., 2022, https://arxiv.org/abs/2210.17323
    """

    mode: Literal["weight_only"] = Field("weight_only", description="Block-wise low-bit weights, float activations.")
    weight_dtype: Literal["int4", "int8"] = Field("int4", description="Bits per weight.")
    block_size: int = Field(32, ge=16, le=256, description="Weights per block along the input dimension (a power "
                            "of two, 16 to 256); one scale per block.")
    symmetric: bool = Field(
        False, description="Symmetric blocks (no zero points). `awq_clip` and the PyTorch path are always "
        "symmetric.",
    )  # fmt: skip
    algorithm: Literal["auto", "awq_clip", "rtn", "hqq", "gptq", "k_quant"] = Field(
        "auto", description="`awq_clip`: per-block clipping searched to minimize the error weighted by the "
        "calibration data's activations (plain error without calibration data); `rtn`: round to nearest; `hqq`: "
        "half-quadratic (int4, no data); `gptq`: needs calibration data; `k_quant`: llama.cpp k-quants; `auto`: "
        "`awq_clip` with calibration data, else `rtn`. `hqq`, `gptq` and `k_quant` are ONNX only.",
    )  # fmt: skip
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="`MatMulNBits` compute type: 0/None default, 1 fp32, 2 fp16, 3 bf16, 4 int8. ONNX only."
    )
    num_samples: int = Field(32, ge=1, le=100_000, description="Calibration rows used by `awq_clip` and `gptq`.")
    quantize_embeddings: bool = Field(
        True, description="Also store large embedding tables as int8 with one scale per row. ONNX only."
    )
    fusion: Fusion = Field("auto", description=_FUSION)
    preprocess: bool = Field(True, description=_PREPROCESS)
    accuracy_guard: AccuracyGuard | None = Field(
        None, description="Return the most sensitive layers to float until the drop is within bounds. ONNX only."
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("block_size must be a power of two (16, 32, 64, 128 or 256)")
        return value

    @model_validator(mode="after")
    def _algorithm_fits(self) -> WeightOnlyQuantizeConfig:
        if self.algorithm == "hqq" and self.weight_dtype != "int4":
            raise ValueError("algorithm 'hqq' quantizes to int4 only")
        return self

    @property
    def bits(self) -> int:
        return 4 if self.weight_dtype == "int4" else 8

    def check(self, context: SubmitContext) -> Problems:
        problems: Problems = []
        op_types = context.model.get("op_types") or {}
        if op_types and not _MATMUL_KINDS.intersection(op_types):
            found = ", ".join(sorted(op_types)[:8])
            problems.append((("weight_dtype",), f"{self.weight_dtype} weight-only quantization stores MatMul/Gemm "
                             f"(Linear) weights; this model has none (its ops: {found})"))
        if self.algorithm == "gptq" and context.calibration is None:
            problems.append((("algorithm",), "algorithm 'gptq' needs calibration data: give calibration_dataset_id"))
        return problems + super().check(context)

    def representation_problem(self, representation: str) -> str | None:
        if representation == "torch":
            if self.algorithm in ("hqq", "gptq", "k_quant"):
                return (f"algorithm {self.algorithm!r} runs on ONNX models; use 'awq_clip' or 'rtn', or ask for "
                        "'onnx' output")
            if self.accuracy_level is not None:
                return "accuracy_level is a setting of ONNX Runtime's MatMulNBits; ask for 'onnx' output"
        return super().representation_problem(representation)

    # `hf` output: a compressed-tensors folder (W4A16 / W8A16, pack-quantized, symmetric groups of `block_size`)
    # that transformers loads, checked against the job's model before it becomes an artifact
    # (deepopt_core/formats/hf_quantized.py).


class _FloatConfig(_QuantizeConfig):
    keep_io_types: bool = Field(
        True, description="Keep the model's float inputs and outputs in float32 (casts at the edges); false: "
        "they take the 16-bit type too (ONNX only).",
    )  # fmt: skip

    def check(self, context: SubmitContext) -> Problems:
        problems = super().check(context)
        fixed = (context.model.get("details") or {}).get("float32_ops")
        if context.model.get("format") == "torchscript" and fixed and "torchscript" in (context.outputs or ()):
            problems.append((("mode",), f"this TorchScript graph makes float32 tensors whatever the weights' type "
                             f"({', '.join(fixed[:4])}), so its {self.mode} weights would meet float32 activations "  # type: ignore[attr-defined]
                             "in a TorchScript output; ask for 'onnx' output, or upload a .pt2 or Hugging Face "
                             "model"))
        return problems

    def representation_problem(self, representation: str) -> str | None:
        if representation == "torch" and not self.keep_io_types:
            return "PyTorch outputs keep float32 inputs and outputs; keep_io_types false needs an ONNX output"
        return super().representation_problem(representation)


class Fp16QuantizeConfig(_FloatConfig):
    """float16 weights and compute; ops without a float16 kernel run in float32 behind casts.

    ONNX: ONNX Runtime's float16 converter with its block list. PyTorch: half-precision weights and compute.
    Micikevicius et al., 2018, https://arxiv.org/abs/1710.03740
    """

    mode: Literal["fp16"] = Field("fp16", description="float16 weights and compute.")


class Bf16QuantizeConfig(_FloatConfig):
    """bfloat16 weights and compute.

    ONNX Runtime's CPU provider has bfloat16 kernels for few ops: those without one compute in float32 behind
    casts (listed in the decisions as `no_cpu_kernel`), so on CPU bf16 mainly halves the file. PyTorch: bfloat16
    weights and compute. Kalamkar et al., 2019, https://arxiv.org/abs/1905.12322
    """

    mode: Literal["bf16"] = Field("bf16", description="bfloat16 weights and compute.")


# The first is the default when `mode` is omitted.
QUANTIZE_CONFIGS: list[type[PassConfig]] = [
    DynamicQuantizeConfig, StaticQuantizeConfig, WeightOnlyQuantizeConfig, Fp16QuantizeConfig, Bf16QuantizeConfig,
]  # fmt: skip
