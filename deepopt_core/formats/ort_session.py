"""ONNX Runtime sessions for untrusted models: every session DeepOpt creates comes from here.

An uploaded ONNX graph may name ops of any domain. ONNX Runtime runs only the kernels it was built with plus the
custom-op libraries a caller registers (`SessionOptions.register_custom_ops_library`, onnxruntime-extensions); DeepOpt
registers none, so a graph that asks for a custom op fails to load (a clean `pass_failed`/422) instead of loading
native code. With `ORT_LOAD_CONFIG_FROM_MODEL=1` in the environment, ONNX Runtime would also apply session options
stored in the model's own metadata (`ort_config`); a model does not get to configure its session, so that is
switched off here.
"""

from __future__ import annotations

import os
from typing import Any

# The environment variable with which ONNX Runtime reads session options from the model's metadata.
LOAD_CONFIG_FROM_MODEL = "ORT_LOAD_CONFIG_FROM_MODEL"


def session_options(threads: int | None = None, log_severity: int = 3) -> Any:
    """A fresh `SessionOptions`: no custom-op libraries, no configuration taken from the model."""
    import onnxruntime as ort

    os.environ.pop(LOAD_CONFIG_FROM_MODEL, None)
    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    if threads:
        options.intra_op_num_threads = threads
    return options


def inference_session(model: str | bytes, options: Any | None = None, providers: list[str] | None = None) -> Any:
    """An `InferenceSession` on `model` (a path or serialized bytes) with `options` from :func:`session_options`."""
    import onnxruntime as ort

    os.environ.pop(LOAD_CONFIG_FROM_MODEL, None)
    return ort.InferenceSession(model, options if options is not None else session_options(),
                                providers=providers or ["CPUExecutionProvider"])
