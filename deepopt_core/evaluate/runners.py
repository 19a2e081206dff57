"""Run a saved model: ONNX Runtime for ONNX, torch for TorchScript, .pt2 and Hugging Face models."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from deepopt_core.evaluate.inputs import batches
from deepopt_core.specs import ModelInfo

log = logging.getLogger("deepopt.evaluate")


class Runner:
    """A loaded model that maps an input feed (name -> array) to its outputs (list of arrays)."""

    format: str = ""

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def num_parameters(self) -> int:
        raise NotImplementedError

    def sparsity(self) -> Any:
        """A :class:`deepopt_core.sparsity.SparsityReport` of the loaded model."""
        raise NotImplementedError

    def close(self) -> None:
        return None


def first_outputs(runner: Runner, feed: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """The first output of `runner` over all rows of `feed`, batch by batch, concatenated."""
    parts = [runner(batch)[0] for batch in batches(feed, batch_size)]
    return np.concatenate(parts, axis=0) if parts else np.empty(0)


def require_cuda() -> None:
    """Fail the run with a clear message when `device="cuda"` was asked for on a worker without a GPU."""
    import onnxruntime as ort
    import torch

    from deepopt_core.errors import InvalidPipeline

    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InvalidPipeline(
            "device 'cuda' was asked for, but this worker has no usable CUDA device (torch CUDA: "
            f"{torch.cuda.is_available()}, ONNX Runtime providers: {ort.get_available_providers()}); "
            "run it on a worker of the gpu queue on a GPU machine, or ask for device 'cpu'",
            field="device",
        )


class OrtRunner(Runner):
    """ONNX Runtime on the CPU (or CUDA) execution provider; inputs are cast to the session's input types."""

    format = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu",
                 graph_optimization: str = "all"):
        import onnxruntime as ort

        from deepopt_core.formats.onnx_inspect import load_onnx
        from deepopt_core.formats.ort_session import inference_session, session_options

        self.path = Path(path)
        self.model = load_onnx(self.path)
        options = session_options(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[graph_optimization])
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = inference_session(str(self.path), options, providers)
        self.inputs = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        ready = {}
        for name, dtype in self.inputs.items():
            array = feed[name]
            ready[name] = array.astype(dtype, copy=False) if dtype is not None else array
        return [np.asarray(o) for o in self.session.run(None, ready)]

    def num_parameters(self) -> int:
        from deepopt_core.formats.onnx_inspect import count_parameters

        return count_parameters(self.model)

    def sparsity(self) -> Any:
        from deepopt_core.sparsity import onnx_sparsity

        return onnx_sparsity(self.model)


_GRAPH_LEVELS = {
    "disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}  # fmt: skip


class TorchRunner(Runner):
    """A torch module (TorchScript, .pt2 or Hugging Face), called with its inputs positionally."""

    def __init__(self, path: str | Path, model_format: str, info: ModelInfo, threads: int | None = None,
                 workdir: str | Path | None = None, device: str = "cpu"):
        import torch

        from deepopt_core.formats import load_torch_model

        if threads:
            torch.set_num_threads(threads)
        self.format = model_format
        self.names = [t.name for t in info.inputs]
        self.module, _ = load_torch_model(path, model_format, workdir)
        self.device = device
        if device != "cpu":
            self.module = self.module.to(device)

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from deepopt_core.formats.torch_common import run_module

        return run_module(self.module, feed, self.names, device=self.device)

    def num_parameters(self) -> int:
        from deepopt_core.formats.torch_common import count_parameters

        return count_parameters(self.module)

    def sparsity(self) -> Any:
        from deepopt_core.sparsity import torch_sparsity

        return torch_sparsity(self.module)


def open_runner(path: str | Path, model_format: str, info: ModelInfo, *, threads: int | None = None,
                workdir: str | Path | None = None, device: str = "cpu", graph_optimization: str = "all") -> Runner:
    """Load the model at `path` for running on `device`."""
    if model_format == "onnx":
        return OrtRunner(path, threads, device, graph_optimization)
    return TorchRunner(path, model_format, info, threads, workdir, device)


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return os.path.getsize(path)


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (0 where that does not exist)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
