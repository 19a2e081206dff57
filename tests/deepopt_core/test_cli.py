"""The child-process protocol of `python -m deepopt_core.cli` (what the API and the worker rely on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepopt_core.protocol import Failure, Inspected, parse_event
from deepopt_core.result import Result
from deepopt_core.specs import ModelInfo
from tests.deepopt_core.conftest import FAST_BENCH
from tests.fixtures.models import write_pickle

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "deepopt_core.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300, check=False)


@pytest.mark.parametrize("key", ["onnx", "torchscript"])
def test_inspect_prints_model_info(digits, key):
    proc = cli("inspect", str(digits[key]))
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    event = parse_event(line)
    assert isinstance(event, Inspected)
    info = event.info
    assert info.format == key and info.inputs[0].name == "input"
    assert ModelInfo.model_validate(info.model_dump()) == info


def test_inspect_error_is_json_with_exit_2(tmp_path):
    proc = cli("inspect", str(write_pickle(tmp_path / "model.pt")))
    assert proc.returncode == 2
    [line] = proc.stdout.splitlines()
    error = parse_event(line)
    assert isinstance(error, Failure)
    assert error.code == "unsafe_content" and error.status == 422 and "pickle" in error.message
    assert set(json.loads(line)) <= {"event", "code", "status", "message", "field"}


def _request(tmp_path: Path, **fields) -> Path:
    request = {"data": {"calibration": None, "eval": None, "train": None}, "outputs": None, "device": "cpu",
               "benchmark": FAST_BENCH, "workdir": str(tmp_path / "out"), **fields}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    return path


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]  # every line must be JSON


def test_run_torchscript_prune_quantize(digits, tmp_path):
    request = _request(
        tmp_path, model=str(digits["torchscript"]), model_format="torchscript", model_name="digits",
        passes=[{"type": "prune", "sparsity": 0.5}, {"type": "quantize"}],
        data={"calibration": str(digits["calibration"]), "eval": str(digits["eval"]), "train": None},
        outputs=["torchscript", "onnx"],
    )  # fmt: skip
    proc = cli("run", str(request))
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(proc.stdout)
    assert events[-1] == {"event": "result"}
    progress = [e for e in events[:-1]]
    assert all(e["event"] == "progress" and 0.0 <= e["fraction"] <= 1.0 for e in progress)
    assert {"prune", "quantize", "export", "benchmark"} <= {e["stage"] for e in progress}
    # Which pass each report is in is data, not read out of the stage text (the plan's export has no index).
    assert {(e.get("pass_index"), e.get("pass_type")) for e in progress} == {
        (0, "prune"), (1, "quantize"), (None, "export"), (None, None)}
    result = Result.model_validate_json((tmp_path / "out" / "result.json").read_text())
    assert [a.filename for a in result.artifacts] == [
        "digits-optimized.pt", "digits-optimized.onnx", "digits-tradeoff.svg", "digits-tradeoff.png",
        "digits-manifest.json",
    ]
    assert len(result.benchmarks) == 3
    assert all(b.metrics["accuracy"] >= result.benchmarks[0].metrics["accuracy"] - 0.02 for b in result.benchmarks)


def test_run_onnx_and_errors(digits, tmp_path):
    ok = _request(tmp_path, model=str(digits["onnx"]), passes=[{"type": "prune", "sparsity": 0.5}])
    proc = cli("run", str(ok))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _events(proc.stdout)[-1] == {"event": "result"}

    bad = _request(tmp_path, model=str(digits["onnx"]), passes=[{"type": "export"}])
    proc = cli("run", str(bad))
    assert proc.returncode == 3
    last = _events(proc.stdout)[-1]
    assert last["event"] == "error" and last["code"] == "invalid_pipeline" and "export" in last["message"]

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"model": str(digits["onnx"]), "passes": []}))  # no workdir
    proc = cli("run", str(broken))
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    _events(proc.stdout)


def test_a_run_request_carries_the_stored_inspection(digits, tmp_path, monkeypatch):
    """The worker writes the model's inspection from its upload into the request; the child takes it, validated,
    instead of inspecting the model again."""
    from deepopt_core import cli, pipeline
    from deepopt_core.formats import inspect_model
    from deepopt_core.protocol import RunRequest, read_message, write_message

    request = RunRequest(model=digits["onnx"], model_info=inspect_model(digits["onnx"], "onnx"), model_format="onnx",
                         passes=[{"type": "prune", "sparsity": 0.5}], benchmark=FAST_BENCH, workdir=tmp_path / "out")
    path = write_message(tmp_path / "request.json", request)
    assert read_message(path, RunRequest) == request
    inspected: list[Path] = []
    real = pipeline.inspect_model
    monkeypatch.setattr(pipeline, "inspect_model", lambda p, *a, **k: inspected.append(Path(p)) or real(p, *a, **k))
    assert cli.main(["run", str(path)]) == 0
    assert Path(digits["onnx"]) not in inspected and inspected  # the outputs are still inspected
    assert Result.model_validate_json((tmp_path / "out" / "result.json").read_text()).artifacts
