"""Sanity limits on what an uploaded model declares, checked at inspection (no heavy imports).

A model whose inputs declare absurd static shapes (a batch of 10^12 rows, a negative dimension) would have the
benchmark allocate its inputs and die far from the cause; it is refused at upload with the reason instead.
"""

from __future__ import annotations

import math

from deepopt_core.errors import InvalidModel
from deepopt_core.specs import ModelInfo

MAX_DIM = 2**24
MAX_ELEMENTS = 2**28  # a 1 GiB float32 tensor


def check_declared_shapes(info: ModelInfo) -> None:
    """Raise InvalidModel when an input or output declares a negative, huge, or huge-in-total static shape."""
    for role, tensors in (("input", info.inputs), ("output", info.outputs)):
        for tensor in tensors:
            dims = [d for d in (tensor.shape or []) if isinstance(d, int)]
            bad = [d for d in dims if d < 0 or d > MAX_DIM]
            if bad:
                raise InvalidModel(
                    f"{role} {tensor.name!r} declares dimension {bad[0]} (allowed: 0 to {MAX_DIM})", field="file"
                )
            if dims and math.prod(dims) > MAX_ELEMENTS:
                raise InvalidModel(
                    f"{role} {tensor.name!r} declares shape {tensor.shape}: {math.prod(dims)} elements, more than "
                    f"{MAX_ELEMENTS}", field="file",
                )
