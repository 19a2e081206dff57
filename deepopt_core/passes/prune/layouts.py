"""How transformers families name the blocks structured pruning rebuilds: data only (no torch), so that submit
checks read it too."""

from __future__ import annotations

from dataclasses import dataclass

# Encoders whose attention heads and feed-forward units are both rebuilt (``attention.self.query``, ...).
BERT_FAMILY = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})


@dataclass(frozen=True)
class FFNLayout:
    """A layer's feed-forward block, named relative to the layer: Linear producers of one width (a SwiGLU's gate
    and up projections both) read by one Linear; the config field of that width; the model types that use it."""

    producers: tuple[str, ...]
    consumer: str
    config_field: str
    model_types: frozenset[str]


# BERT's own layout is found with its heads; these are the other families'.
FFN_LAYOUTS = (
    FFNLayout(("mlp.fc1",), "mlp.fc2", "intermediate_size", frozenset({"vit", "deit"})),
    FFNLayout(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size",
              frozenset({"llama", "qwen2", "mistral"})),
    FFNLayout(("ffn.lin1",), "ffn.lin2", "hidden_dim", frozenset({"distilbert"})),
    FFNLayout(("intermediate.dense",), "output.dense", "intermediate_size", frozenset()),  # BERT-like naming
)
FFN_MODEL_TYPES = frozenset().union(*(layout.model_types for layout in FFN_LAYOUTS))

# Hugging Face CNNs whose exported graph holds channel spaces structured pruning rebuilds, with the unit kinds
# found there (measured on transformers' classes: ResNet's residual streams and inner chains, MobileNetV2's and
# EfficientNet's expansions through their depthwise convs, EfficientNet's squeeze-excitation joined to them,
# ConvNeXt's pointwise FFN).
TRACED_UNITS: dict[str, frozenset[str]] = {
    "resnet": frozenset({"channels"}), "mobilenet_v2": frozenset({"channels"}), "convnext": frozenset({"neurons"}),
    "efficientnet": frozenset({"channels"}),
}
