"""The matrix's ViT .pt2 upload under dynamic quantization with ONNX output, as a user's job runs it (upload,
submit, the sandboxed child, read back).

It was accepted and then failed in the benchmark (``Concat``: "Axis 0 has mismatched dimensions of 1 and 2"): the
ONNX export of the program kept the export's batch of 2 where the program's batch is symbolic, and the benchmark
runs a batch of 1 (tests/deepopt_core/test_torch_export_to_onnx.py has the export itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import matrix
from benchmarks import matrix_models as mm


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vit_pt2_quantized_to_onnx_succeeds_with_verified_outputs(tmp_path: Path) -> None:
    cell = matrix.Cell("vit", "torch_export", "quantize.dynamic", "onnx")
    with matrix.service(tmp_path / "data") as client:
        uploaded = matrix.upload(client, mm.BY_NAME[cell.arch], "torch_export", mm.DEFAULT_CACHE)
        record = matrix.run_cell(client, cell, uploaded)
    assert record["outcome"] == "succeeded", json.dumps(record, indent=1)[:3000]
    (artifact,) = record["artifacts"]
    assert artifact["format"] == "onnx" and artifact["benchmarked"], artifact
