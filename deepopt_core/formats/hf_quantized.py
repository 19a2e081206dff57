"""Hugging Face folders of weight-only quantized models in the compressed-tensors format, which transformers loads.

A model whose Linear layers the `quantize` pass stored block-wise in int8 or int4
(:class:`deepopt_core.passes.quantize.torch_modes.WeightOnlyLinear`) is written as a compressed-tensors checkpoint
(https://github.com/neuralmagic/compressed-tensors; the format of llm-compressor, read by transformers'
compressed-tensors integration and by vLLM): per layer ``weight_packed`` (the pass's own integers packed into int32
by compressed-tensors' packer), ``weight_scale`` (the pass's scales, one per group of `block_size` input channels)
and ``weight_shape``, with a ``quantization_config`` in config.json (``format: pack-quantized``, symmetric ``group``
strategy; W4A16 or W8A16). Nothing is quantized again: the integers and scales are those the job chose, so the
folder dequantizes to exactly the job's weights.

Before the folder becomes an artifact, :func:`check_loads` loads it with plain
``<Architecture>.from_pretrained(folder)`` and compares its outputs with the job's model: the weights are the same
float32 products ``q * scale`` on both sides, so the outputs agree to float32 rounding (0.0 measured on BERT and
Llama, int4 and int8); :data:`RTOL` of the largest output magnitude allows for a different kernel order only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from deepopt_core.errors import InvalidModel

__all__ = ["check_loads", "has_weight_only_layers", "load_compressed", "write_compressed"]

log = logging.getLogger("deepopt.formats")

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
RTOL = 1e-5
"""Largest allowed |loaded - job| output difference, as a fraction of the job's largest |output| (at least 1)."""


def _weight_only_layers(model: Any) -> dict[str, Any]:
    return {name: sub for name, sub in model.named_modules() if type(sub).__name__ == "WeightOnlyLinear"}


def has_weight_only_layers(model: Any) -> bool:
    """Whether the (unwrapped) Hugging Face model has layers the weight-only quantize pass replaced."""
    return bool(_weight_only_layers(model))


def _integers(layer: Any) -> Any:
    """The layer's (N, in_features) int8 tensor of quantized values (int4 in -8..7, int8 in -128..127)."""
    import torch

    q = layer.qweight
    if layer.bits == 4:  # two values per byte, low nibble first, zero point 8
        q = torch.stack([torch.bitwise_and(q, 15), torch.bitwise_right_shift(q, 4)], dim=-1).to(torch.int16) - 8
    return q.reshape(layer.out_features, -1)[:, : layer.in_features].to(torch.int8).contiguous()


def _scheme(bits: int, block: int, targets: list[str]) -> dict[str, Any]:
    return {
        "targets": targets,
        "weights": {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": block,
                    "dynamic": False, "observer": None},
        "input_activations": None, "output_activations": None, "format": FORMAT,
    }  # fmt: skip


def write_compressed(model: Any, folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``config.json`` (`config` plus its ``quantization_config``) into `folder`.

    Returns the quantization_config written. A layer whose input size is not a multiple of its block size (the
    pass pads the last block) is written with groups of ``gcd(in_features, block)`` channels, each block's scale
    repeated over its groups: compressed-tensors' group strategy needs whole groups, and the dequantized weights
    stay exactly the job's.
    """
    import math

    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import save_file

    layers = _weight_only_layers(model)
    groups: dict[tuple[int, int], list[str]] = {}
    state: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        block = int(layer.qweight.shape[-1]) * (2 if layer.bits == 4 else 1)
        group = math.gcd(layer.in_features, block)
        scales = layer.qscales.reshape(layer.out_features, -1)
        if group != block:  # ConvNeXt's 16-feature layers under block 32: one padded block = one group of 16
            scales = scales.repeat_interleave(block // group, dim=1)[:, : layer.in_features // group]
        groups.setdefault((layer.bits, group), []).append(name)
        state[f"{name}.weight_packed"] = pack_to_int32(_integers(layer), layer.bits)
        state[f"{name}.weight_scale"] = scales.contiguous()
        state[f"{name}.weight_shape"] = torch.tensor([layer.out_features, layer.in_features])
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.detach().contiguous()
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key, tensor in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner in layers:
            continue
        identity = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and identity in seen:  # a tied weight is stored once (as save_model does); transformers
            continue  # ties it again at load
        seen.add(identity)
        state[key] = tensor.detach().contiguous()
    if len(groups) == 1:  # the usual case, as llm-compressor writes it: every Linear but the ignored ones
        ((bits, block),) = groups
        config_groups = {"group_0": _scheme(bits, block, ["Linear"])}
        ignore = sorted(n for n, m in model.named_modules() if type(m).__name__ == "Linear" and n not in layers)
    else:
        config_groups = {f"group_{i}": _scheme(bits, block, sorted(names))
                         for i, ((bits, block), names) in enumerate(sorted(groups.items()))}
        ignore = []
    quantization_config = {
        "quant_method": QUANT_METHOD, "format": FORMAT, "quantization_status": "compressed",
        "config_groups": config_groups, "ignore": ignore, "kv_cache_scheme": None,
    }  # fmt: skip
    config = dict(config, quantization_config=quantization_config)
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if config.get("tie_word_embeddings") and type(output_embeddings).__name__ == "WeightOnlyLinear":
        config["tie_word_embeddings"] = False  # the head now holds its own quantized weight
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return quantization_config


def _model_class(config: dict[str, Any]) -> Any:
    import transformers

    architectures = config.get("architectures") or []
    cls = getattr(transformers, str(architectures[0]), None) if architectures else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return cls
    return transformers.AutoModel  # only model classes are named from config.json, never other callables


def load_compressed(folder: Path, config: dict[str, Any], *, dequantize: bool = True) -> Any:
    """A compressed-tensors folder loaded with transformers (local files only, no remote code), in float32.

    With `dequantize` (the default, for running the model here) the weights become dense Linear weights at load
    (`run_compressed=False`); without it, transformers' plain default.
    """
    import torch
    import transformers

    method = (config.get("quantization_config") or {}).get("quant_method")
    if method != QUANT_METHOD:
        raise InvalidModel(f"quantization_config with quant_method {method!r}: only {QUANT_METHOD!r} models load")
    os.environ.setdefault("TQDM_DISABLE", "1")
    transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "dtype": torch.float32}
    if dequantize:
        kwargs["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=True)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "quantization_config passed and in config.json": the loading flag only
            return _model_class(config).from_pretrained(str(folder), **kwargs).eval()
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InvalidModel(f"transformers cannot load the compressed-tensors model: {str(exc)[:300]}") from None


def _probe(config: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Fixed inputs for comparing two models: batch 2 x 16 tokens within the vocabulary, or, for an image model,
    2 images of its size."""
    import torch

    if "pixel_values" in names:
        size = config.get("image_size")
        side = int(size if isinstance(size, int) else (size or [32])[0])
        channels = int(config.get("num_channels") or 3)
        generator = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.rand(2, channels, side, side, generator=generator)}
    vocab = int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 100)
    ids = (torch.arange(32).reshape(2, 16) * 7919 + 3) % vocab
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {name: feeds[name] for name in names if name in feeds}


def check_loads(folder: Path, model: Any, names: list[str]) -> dict[str, Any]:
    """Load `folder` with plain ``from_pretrained`` and compare its outputs with `model` (the job's).

    Returns {"max_abs_diff", "tolerance", "outputs"}; raises ValueError when the folder does not load or its outputs
    differ by more than the tolerance.
    """
    import torch

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    try:
        loaded = load_compressed(folder, config, dequantize=False)
    except InvalidModel as exc:
        raise ValueError(str(exc)) from None
    feeds = _probe(config, names)
    with torch.no_grad():
        expected = model(**feeds, return_dict=True)
        got = loaded(**feeds, return_dict=True)
    diff, scale, compared = 0.0, 1.0, []
    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and isinstance(got.get(key), torch.Tensor):
            diff = max(diff, float((got[key].float() - value.float()).abs().max()))
            scale = max(scale, float(value.float().abs().max()))
            compared.append(key)
    tolerance = RTOL * scale
    if not compared:
        raise ValueError("the transformers-loaded model returns none of the job model's outputs")
    if not diff <= tolerance:  # also catches NaN
        raise ValueError(f"the compressed-tensors folder loaded by transformers differs from the quantized model by "
                         f"{diff:.3g} (tolerance {tolerance:.3g}) on {', '.join(compared)}")
    return {"max_abs_diff": diff, "tolerance": tolerance, "outputs": compared}
