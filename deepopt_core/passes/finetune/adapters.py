"""What PEFT does not provide here: bottleneck adapters, deep prefix tuning for BERT-family encoders, and a
weight-quantized frozen base (QLoRA-style) with a correct merge.

* Bottleneck adapters (LLM-Adapters, Hu et al., 2023, https://arxiv.org/abs/2304.01933): ``down -> ReLU -> up``
  with ``up`` initialised to zero, so the adapted model starts as the base. *Series* (Houlsby et al., 2019,
  https://arxiv.org/abs/1902.00751) adds it on a layer's output, ``y + up(relu(down(y)))``; *parallel* (He et al.,
  2022, https://arxiv.org/abs/2110.04366) beside the layer, ``y + s * up(relu(down(x)))``.
* Prefix tuning (Li and Liang, 2021, https://arxiv.org/abs/2101.00190; deep prompts as in P-Tuning v2) as an
  attention function registered with transformers: every self-attention layer gets trained key and value
  vectors prepended to its keys and values, the attention mask extended to see them.
* :class:`QuantLinear`: a Linear layer whose frozen weight is stored as int8 codes with symmetric per-channel
  scales (int4: codes in [-8, 7], one scale per group of 32 inputs), as QLoRA freezes a 4-bit base
  (Dettmers et al., 2023, https://arxiv.org/abs/2305.14314). It is an ``nn.Linear`` to PEFT, which puts LoRA on it.
  :func:`merge_into_quantized` merges correctly: dequantize, add the LoRA update, requantize.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepopt_core.passes.finetune.modules import replace_module

log = logging.getLogger("deepopt.passes.adapters")
PREFIX_ATTENTION = "deepopt_prefix"
INT4_GROUP = 32


class Bottleneck(nn.Module):
    """``up(relu(down(x)))``, ``up`` zero-initialised."""

    def __init__(self, features_in: int, size: int, features_out: int) -> None:
        super().__init__()
        self.down = nn.Linear(features_in, size)
        self.up = nn.Linear(size, features_out)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))


class AdaptedLinear(nn.Module):
    """A Linear layer with a series or parallel bottleneck adapter."""

    def __init__(self, base: Any, kind: str, size: int, scaling: float = 1.0) -> None:
        super().__init__()
        self.base = base
        self.kind = kind
        self.scaling = scaling
        features_in, features_out = linear_features(base)
        self.adapter = Bottleneck(features_out if kind == "series" else features_in, size, features_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.kind == "series":
            return y + self.adapter(y)
        return y + self.scaling * self.adapter(x)


def linear_features(layer: Any) -> tuple[int, int]:
    """(input, output) features of a Linear layer, or of GPT-2's ``Conv1D``, a Linear layer whose weight is
    stored transposed (input x output)."""
    if type(layer).__name__ == "Conv1D":
        return int(layer.weight.shape[0]), int(layer.weight.shape[1])
    return int(layer.in_features), int(layer.out_features)


def add_bottlenecks(module: nn.Module, names: list[str], kind: str, size: int, scaling: float) -> list[str]:
    """Wrap the Linear layers `names` of `module` with adapters; returns the adapted names."""
    for name in names:
        replace_module(module, name, AdaptedLinear(module.get_submodule(name), kind, size, scaling))
    return names


# ---------------------------------------------------------------------------------------------------------------
# prefix tuning
# ---------------------------------------------------------------------------------------------------------------


def _prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
    from transformers.models.bert.modeling_bert import eager_attention_forward

    prefix_key = getattr(module, "prefix_key", None)
    if prefix_key is not None:
        batch = query.shape[0]
        key = torch.cat([prefix_key.unsqueeze(0).expand(batch, -1, -1, -1).to(key.dtype), key], dim=2)
        prefix_value: Any = module.prefix_value
        value = torch.cat([prefix_value.unsqueeze(0).expand(batch, -1, -1, -1).to(value.dtype), value], dim=2)
        if attention_mask is not None:
            pad = torch.zeros(*attention_mask.shape[:-1], prefix_key.shape[1], dtype=attention_mask.dtype,
                              device=attention_mask.device)
            if attention_mask.dtype == torch.bool:
                pad = pad | True
            attention_mask = torch.cat([pad, attention_mask], dim=-1)
    return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_prefix_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    function: Any = _prefix_attention
    AttentionInterface.register(PREFIX_ATTENTION, function)
    mask: Any = AttentionMaskInterface._global_mapping["eager"]
    AttentionMaskInterface.register(PREFIX_ATTENTION, mask)


def add_prefix(model: Any, tokens: int, seed: int) -> int:
    """Give every self-attention layer of a BERT-family model `tokens` trained key/value vectors.

    The prefixes start as the keys and values of randomly drawn vocabulary embeddings (a start inside the
    distribution the layer sees). Returns the number of layers.
    """
    _register_prefix_attention()
    generator = torch.Generator().manual_seed(seed)
    embeddings = model.get_input_embeddings().weight.detach()
    layers: list[Any] = [m for m in model.modules() if type(m).__name__.endswith("SelfAttention") and hasattr(m, "key")]
    if not layers:
        from deepopt_core.errors import PassFailed

        raise PassFailed("prefix tuning: no BERT-style self-attention layers found")
    rows = embeddings[torch.randint(0, embeddings.shape[0], (tokens,), generator=generator)]
    for layer in layers:
        heads, size = layer.num_attention_heads, layer.attention_head_size
        with torch.no_grad():
            k = layer.key(rows).view(tokens, heads, size).transpose(0, 1)
            v = layer.value(rows).view(tokens, heads, size).transpose(0, 1)
        layer.prefix_key = nn.Parameter(k.clone())
        layer.prefix_value = nn.Parameter(v.clone())
    model.set_attn_implementation(PREFIX_ATTENTION)
    return len(layers)


# ---------------------------------------------------------------------------------------------------------------
# quantized base
# ---------------------------------------------------------------------------------------------------------------


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization: (int8 codes, float scales) per output channel (int8) or per group of 32 (int4)."""
    weight = weight.detach().float()
    out_features, in_features = weight.shape
    levels = 127 if bits == 8 else 7
    group = INT4_GROUP if bits == 4 and in_features % INT4_GROUP == 0 else in_features
    grouped = weight.reshape(out_features, in_features // group, group)
    scales = grouped.abs().amax(-1).clamp_min(1e-12) / levels
    codes = torch.round(grouped / scales.unsqueeze(-1)).clamp(-levels - (bits == 4), levels).to(torch.int8)
    return codes.reshape(out_features, in_features), scales


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out_features, in_features = codes.shape
    groups = scales.shape[1]
    return (codes.reshape(out_features, groups, in_features // groups).float() * scales.unsqueeze(-1)).reshape(
        out_features, in_features)


class QuantLinear(nn.Linear):
    """A frozen Linear layer stored as int8 codes and scales (``bits`` 8 or 4); ``weight`` is the dequantized
    tensor. Built with :meth:`from_linear`."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, bits: int) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = int(codes.shape[1]), int(codes.shape[0])
        self.bits = bits
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.bias: Any = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int) -> QuantLinear:
        codes, scales = quantize_weight(linear.weight, bits)
        return cls(codes, scales, linear.bias, bits)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, bits: int) -> QuantLinear:
        codes, scales = quantize_weight(weight, bits)
        return cls(codes, scales, bias, bits)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return dequantize_weight(self.codes, self.scales)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_linear(self) -> nn.Linear:
        """A plain float Linear with exactly the dequantized weights (for formats that store floats)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def quantize_base(module: nn.Module, bits: int, skip: list[str]) -> list[str]:
    """Replace every Linear layer of `module` except those under `skip` (the task head) by a QuantLinear."""
    names = [n for n, m in module.named_modules()
             if type(m) is nn.Linear and not any(n == s or n.startswith(s + ".") for s in skip)]
    for name in names:
        replace_module(module, name, QuantLinear.from_linear(module.get_submodule(name), bits))  # type: ignore[arg-type]
    return names


def merge_into_quantized(peft_model: Any) -> int:
    """Merge LoRA layers whose base is a QuantLinear: dequantize, add the update, requantize; in place.

    PEFT's own merge adds to ``base.weight.data``, which for a quantized base is a temporary tensor, so these
    layers are merged here first and replaced by their requantized QuantLinear. Returns how many were merged.
    """
    merged = 0
    for name, sub in list(peft_model.named_modules()):
        base = getattr(sub, "base_layer", None)
        if not isinstance(base, QuantLinear) or not hasattr(sub, "get_delta_weight"):
            continue
        delta = sum(sub.get_delta_weight(a) for a in sub.active_adapters if a in sub.lora_A)
        new = QuantLinear.from_weight(base.weight + delta, base.bias, base.bits)
        replace_module(peft_model, name, new)
        merged += 1
    return merged


def dequantize_all(module: nn.Module) -> int:
    """Replace QuantLinear layers by float Linear layers with the same (dequantized) weights."""
    names = [n for n, m in module.named_modules() if isinstance(m, QuantLinear)]
    for name in names:
        replace_module(module, name, module.get_submodule(name).to_linear())  # type: ignore[operator]
    return len(names)
