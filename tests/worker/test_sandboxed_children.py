"""The API and the workers start their model children in the sandbox, read their answers as the protocol and
take back only files from the child's own folder (tests/deepopt_core/test_sandbox.py proves the sandbox holds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.api.problems import ProblemError
from app.core.config import Settings
from app.services.inspection import inspection_answer
from app.storage import make_storage
from deepopt_core.protocol import Failure, Inspected, dump
from deepopt_core.result import ArtifactResult, Result
from deepopt_core.specs import ModelInfo
from worker.child import sandboxed
from worker.executor import _persist

SECRETS = {"DEEPOPT_API_KEYS": "t:key-1", "DEEPOPT_ADMIN_KEY": "admin-2", "DEEPOPT_DATABASE_URL": "postgresql://x",
           "AWS_SECRET_ACCESS_KEY": "aws-3", "DEEPOPT_WEBHOOK_SECRETS": "t:wh-4"}


def test_job_and_trial_children_are_sandboxed_with_no_secret(tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = Settings(data_dir=tmp_path, job_memory_limit_bytes=2 * 1024**3, sandbox="strict")
    scratch = tmp_path / "work" / "job"
    popen = sandboxed(["run", str(scratch / "request.json")], scratch, settings)
    args = popen["args"]
    assert args[:3] == [sys.executable, "-m", "deepopt_core.sandbox"]
    assert args[args.index("--scratch") + 1] == str(scratch.resolve())
    assert "--strict" in args and args[args.index("--memory-limit") + 1] == str(2 * 1024**3)
    assert args[args.index("--") + 1:] == ["deepopt_core.cli", "run", str(scratch / "request.json")]
    assert popen["cwd"] == scratch and (scratch / "tmp").is_dir()
    assert not set(SECRETS) & set(popen["env"])
    assert not set(SECRETS.values()) & set(popen["env"].values())


def _info() -> ModelInfo:
    return ModelInfo(format="onnx", details={"size_bytes": 3})


def test_inspection_takes_exactly_one_answer_with_its_exit_status():
    answer = dump(Inspected(info=_info())).encode()
    assert inspection_answer(answer + b"\n", 0)["format"] == "onnx"
    refusal = dump(Failure(code="unsafe_content", status=422, message="a pickle")).encode()
    with pytest.raises(ProblemError) as refused:
        inspection_answer(refusal, 2)
    assert refused.value.status == 422 and "a pickle" in refused.value.detail
    forged = b'{"event":"inspected","info":{"format":"onnx","details":{"environ":"DEEPOPT_ADMIN_KEY=admin-2"}}}'
    for stdout, code in (
        (answer + b"\n" + answer, 0),  # a forged second description beside the real one
        (forged, 0),  # a field the schema does not have
        (b'{"format":"onnx","inputs":[]}', 0),  # the old bare line
        (answer, 2), (refusal, 0), (answer, -9), (b"", 0),
    ):
        with pytest.raises(ProblemError) as unreadable:
            inspection_answer(stdout, code)
        assert unreadable.value.status == 422 and "admin-2" not in str(unreadable.value.detail)


def test_persist_refuses_files_from_outside_the_childs_folder(tmp_path):
    workdir = tmp_path / "work" / "job" / "attempt-1"
    out = workdir / "out"
    out.mkdir(parents=True)
    other_tenant = tmp_path / "blobs" / "ab" / "their-model"
    other_tenant.parent.mkdir(parents=True)
    other_tenant.write_bytes(b"their weights")
    (out / "linked.onnx").symlink_to(other_tenant)
    storage = make_storage(Settings(data_dir=tmp_path / "store"))
    for path in (other_tenant, out / "linked.onnx", out / ".." / ".." / ".." / ".." / "blobs" / "ab" / "their-model"):
        result = Result(artifacts=[ArtifactResult(path=str(path), format="onnx", filename="x.onnx")])
        (out / "result.json").write_text(result.model_dump_json())
        with pytest.raises(PermissionError):
            _persist("job", "worker", workdir, storage)
    assert not any(p.is_file() for p in Path(tmp_path / "store").rglob("*") if "tmp" not in p.parts)
