"""The registry of passes: a pass is a pydantic config, an implementation module, and one registration line.

The implementation is named by its dotted module path and imported only when a pipeline runs, so that listing
passes and validating job specs (in the API process) never imports torch or ONNX Runtime.
"""

from __future__ import annotations

import builtins
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

Representation = Literal["onnx", "torch"]


@dataclass(frozen=True)
class PassEntry:
    """One registered pass.

    Attributes:
        type: the discriminator value in job specs (`{"type": "quantize", ...}`).
        configs: the pydantic config classes; several when a second field selects a variant (`quantize` has
            one per `mode`); the first is the default variant when the field is omitted.
        impl: dotted path of the module that implements it. The module defines `apply_onnx(spec, model, ctx)`
            and/or `apply_torch(spec, model, ctx)` for the representations listed in `representations`.
        representations: the model representations the pass can run on.
        variant_field: the field that selects among `configs` (each config's default for it is its tag).
    """

    type: str
    configs: tuple[builtins.type, ...]
    impl: str
    representations: tuple[Representation, ...]
    variant_field: str | None = None

    def variant_of(self, config: builtins.type) -> str | None:
        """The value of the variant field (`mode`, `method`) that selects `config`, or None."""
        if self.variant_field is None:
            return None
        return str(config.model_fields[self.variant_field].default)  # type: ignore[attr-defined]

    @property
    def default_variant(self) -> str | None:
        return self.variant_of(self.configs[0]) if self.variant_field else None

    def load(self) -> ModuleType:
        return importlib.import_module(self.impl)


_REGISTRY: dict[str, PassEntry] = {}


def register_pass(
    type: str,
    configs: builtins.type | list[builtins.type],
    impl: str,
    representations: tuple[Representation, ...],
    variant_field: str | None = None,
) -> None:
    """Register a pass by name; a second registration under the same name is a programming error."""
    if type in _REGISTRY:
        raise ValueError(f"pass type {type!r} is already registered")
    if not representations:
        raise ValueError(f"pass {type!r} must run on at least one representation")
    classes = tuple(configs) if isinstance(configs, list) else (configs,)
    if len(classes) > 1 and variant_field is None:
        raise ValueError(f"pass {type!r} has several configs and needs a variant_field")
    entry = PassEntry(type, classes, impl, representations, variant_field)
    tags = [entry.variant_of(c) for c in classes]
    if len(set(tags)) != len(tags):
        raise ValueError(f"pass {type!r} has two configs for the same {variant_field}")
    _REGISTRY[type] = entry


def get_pass(type: str) -> PassEntry:
    try:
        return _REGISTRY[type]
    except KeyError:
        raise KeyError(f"unknown pass type {type!r}; known: {sorted(_REGISTRY)}") from None


def all_passes() -> list[PassEntry]:
    return list(_REGISTRY.values())
