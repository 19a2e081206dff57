"""DeepOpt's compression core: usable with no server.

    from deepopt_core import optimize
    result = optimize("model.onnx", [{"type": "prune", "method": "magnitude", "sparsity": 0.5}],
                      data={"eval": "eval.npz"}, outputs=["onnx"], workdir="out/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["optimize"]

if TYPE_CHECKING:
    from deepopt_core.pipeline import optimize


def __getattr__(name: str) -> Any:
    # The pipeline imports torch; keep `import deepopt_core` (and its specs) light.
    if name == "optimize":
        from deepopt_core.pipeline import optimize

        return optimize
    raise AttributeError(name)
