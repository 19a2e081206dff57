"""The passes. Each registers its config here; implementations are imported only when a pipeline runs.

Adding a pass: write `passes/<name>/config.py` (a `PassConfig` subclass with `type: Literal["<name>"]`),
the implementation module with `apply_onnx` and/or `apply_torch`, one `register_pass` line below, a row in the
test matrix (`tests/deepopt_core/test_passes.py`) and a section in docs/passes.md (docs/adding-a-pass.md).
"""

from deepopt_core.passes.auto.config import AutoConfig
from deepopt_core.passes.distill.config import DistillConfig
from deepopt_core.passes.export.config import ExportConfig
from deepopt_core.passes.finetune.config import FINETUNE_CONFIGS
from deepopt_core.passes.prune.config import PRUNE_CONFIGS
from deepopt_core.passes.quantize.config import QUANTIZE_CONFIGS
from deepopt_core.registry import register_pass

register_pass("quantize", QUANTIZE_CONFIGS, "deepopt_core.passes.quantize.impl", ("onnx", "torch"), "mode")
register_pass("prune", PRUNE_CONFIGS, "deepopt_core.passes.prune.impl", ("onnx", "torch"), "method")
register_pass("export", ExportConfig, "deepopt_core.passes.export.impl", ("torch",))
register_pass("distill", DistillConfig, "deepopt_core.passes.distill.impl", ("torch",))
register_pass("finetune", FINETUNE_CONFIGS, "deepopt_core.passes.finetune.impl", ("torch",), "method")
register_pass("auto", AutoConfig, "deepopt_core.passes.auto.impl", ("onnx",))
