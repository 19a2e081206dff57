"""The sandbox of the children that open uploads: a model whose load really runs code, run the way the API and
the workers run their children, sees no secret, opens no socket, reads no other tenant's blob, writes nowhere but
its scratch folder and cannot touch the process that started it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from deepopt_core.protocol import Done, Failure, Inspected, Progress, parse_event
from deepopt_core.sandbox import (
    REPORT_NAME,
    child_command,
    child_env,
    child_output,
    landlock_abi,
    prepare_scratch,
    probe,
)
from deepopt_core.specs import ModelInfo

SECRETS = {
    "DEEPOPT_API_KEYS": "tenant-a:key-a-3f9c1e,tenant-b:key-b-77d2aa",
    "DEEPOPT_ADMIN_KEY": "admin-5be0c4d1",
    "DEEPOPT_DATABASE_URL": "postgresql+psycopg://deepopt:pw-91ab@127.0.0.1:5432/test",
    "DEEPOPT_BROKER_URL": "redis://:pw-c0ffee@127.0.0.1:6379/0",
    "DEEPOPT_WEBHOOK_SECRETS": "tenant-a:whsec-0d15ea5e",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-8badf00d",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE1234",
}

# What the hostile model does when it is loaded: try every way out, and write down what worked.
PAYLOAD = r'''
import json, os, socket, subprocess
found = {"ran": True, "env": dict(os.environ)}
def attempt(name, action):
    try:
        found[name] = ("ok", repr(action())[:300])
    except Exception as exc:
        found[name] = ("refused", type(exc).__name__)
attempt("parent_environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
attempt("init_environ", lambda: open("/proc/1/environ", "rb").read())
attempt("tcp_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("udp_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("connect_redis", lambda: socket.create_connection(("127.0.0.1", 6379), timeout=2))
attempt("other_blob", lambda: open(os.environ["PROBE_BLOB"]).read() if "PROBE_BLOB" in os.environ else
        open(SETTINGS["blob"]).read())
attempt("list_data_dir", lambda: os.listdir(SETTINGS["data_dir"]))
attempt("write_data_dir", lambda: open(os.path.join(SETTINGS["data_dir"], "marker"), "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/deepopt-sandbox-marker-" + SETTINGS["nonce"], "w").write("x"))
attempt("shell_write", lambda: subprocess.run(["sh", "-c", "echo x > " + SETTINGS["data_dir"] + "/shell-marker"],
                                              check=True, capture_output=True))
attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
attempt("write_scratch", lambda: open("own-file", "w").write("x"))
with open("probe.json", "w") as handle:
    json.dump(found, handle)
'''


class _RunsCode:
    """Unpickling this runs PAYLOAD: the stand-in for the next bypass of the upload checks."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.source = f"SETTINGS = {settings!r}\n" + PAYLOAD

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (self.source,))


# A loader as careless as the ones the upload checks guard against: it unpickles the model file.
CARELESS_LOADER = "import pickle, sys\nwith open(sys.argv[1], 'rb') as f:\n    pickle.load(f)\n"

needs_landlock = pytest.mark.skipif(sys.platform != "linux" or landlock_abi() == 0,
                                    reason="the kernel has no Landlock (docs/security.md: best effort)")


@pytest.fixture
def tenants(tmp_path: Path) -> dict[str, Path]:
    """A data folder with another tenant's blob, and a job's scratch folder holding the hostile model."""
    data_dir = tmp_path / "data"
    blob = data_dir / "blobs" / "ab" / "other-tenant-blob"
    blob.parent.mkdir(parents=True)
    blob.write_text("another tenant's weights")
    scratch = data_dir / "work" / "job-1"
    prepare_scratch(scratch)
    settings = {"blob": str(blob), "data_dir": str(data_dir), "nonce": tmp_path.name}
    (scratch / "model.pkl").write_bytes(pickle.dumps(_RunsCode(settings)))
    loader = tmp_path / "loader.py"
    loader.write_text(CARELESS_LOADER)
    return {"data_dir": data_dir, "blob": blob, "scratch": scratch, "loader": loader, "tmp": tmp_path}


def _run_hostile_model(tenants: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    scratch = tenants["scratch"]
    command = child_command([str(scratch / "model.pkl")], scratch=scratch, readable=[tenants["loader"]],
                            module=str(tenants["loader"]))
    proc = subprocess.run(command, env=child_env(scratch), cwd=scratch, capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads((scratch / "probe.json").read_text())


@needs_landlock
def test_code_in_a_loaded_model_sees_no_secret_and_cannot_get_out(tenants, monkeypatch):
    found = _run_hostile_model(tenants, monkeypatch)
    assert found["ran"] and found["write_scratch"][0] == "ok"  # it really ran, and its own folder works
    everything_seen = json.dumps(found)
    for value in SECRETS.values():
        assert value not in everything_seen
    assert not any(name.startswith(("DEEPOPT_", "AWS_")) for name in found["env"])
    for way_out in ("parent_environ", "init_environ", "tcp_socket", "udp_socket", "unix_socket", "connect_redis",
                    "other_blob", "list_data_dir", "write_data_dir", "write_tmp", "shell_write", "signal_parent"):
        assert found[way_out][0] == "refused", (way_out, found[way_out])
    assert not (tenants["data_dir"] / "marker").exists()
    assert not (tenants["data_dir"] / "shell-marker").exists()
    assert not Path(f"/tmp/deepopt-sandbox-marker-{tenants['tmp'].name}").exists()
    report = json.loads((tenants["scratch"] / REPORT_NAME).read_text())
    assert report["missing"] == [] and report["seccomp"] and report["landlock_abi"] >= 1


def test_child_env_is_an_allow_list(tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = child_env(tmp_path)
    assert not set(SECRETS) & set(env)
    assert env["OMP_NUM_THREADS"] == "1" and env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
    assert env["HOME"].startswith(str(tmp_path)) and env["TMPDIR"].startswith(str(tmp_path))


@needs_landlock
def test_probe_reports_every_layer_on_this_kernel():
    report = probe()
    assert report.complete and report.missing == [], report


@needs_landlock
def test_strict_refuses_nothing_here_and_real_inspection_still_works(digits, tmp_path):
    """Confined the strict way, the real inspector still reads a real model (torch, onnx, numpy load fine)."""
    scratch = tmp_path / "scratch"
    prepare_scratch(scratch)
    command = child_command(["inspect", str(digits["torchscript"])], scratch=scratch,
                            readable=[digits["torchscript"]], strict=True)
    proc = subprocess.run(command, env=child_env(scratch), cwd=scratch, capture_output=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    [line] = proc.stdout.splitlines()
    event = parse_event(line)
    assert isinstance(event, Inspected) and event.info.format == "torchscript"


def test_child_output_stays_in_the_childs_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"x")
    secret = tmp_path / "other-tenant"
    secret.write_text("not yours")
    (out / "link.onnx").symlink_to(secret)
    (out / "sub").mkdir()
    assert child_output(out / "model.onnx", out) == (out / "model.onnx").resolve()
    assert child_output("model.onnx", out) == (out / "model.onnx").resolve()
    for bad in (secret, out / "link.onnx", out / ".." / "other-tenant", out / "sub", Path("/etc/passwd")):
        with pytest.raises(PermissionError):
            child_output(bad, out)


def test_protocol_reads_only_its_own_messages():
    progress = parse_event(b'{"event":"progress","fraction":0.5,"stage":"prune","pass_index":0,"pass_type":"prune"}')
    assert isinstance(progress, Progress) and (progress.pass_index, progress.pass_type) == (0, "prune")
    assert isinstance(parse_event('{"event":"result"}'), Done)
    assert isinstance(parse_event('{"event":"error","code":"bad","message":"m"}'), Failure)
    for forged in (
        b"not json", b"[1, 2]", b'{"format": "onnx"}',  # the old bare ModelInfo line
        b'{"event":"progress","fraction":7}', b'{"event":"result","extra":1}',
        b'{"event":"progress","progress":0.5}', b'{"event":"progress","fraction":0.5,"pass_index":-1}',
        b'{"event":"inspected","info":{"format":"onnx","env":{"DEEPOPT_ADMIN_KEY":"x"}}}',
        b'{"event":"inspected","info":{"format":"onnx","details":{"environ":"DEEPOPT_ADMIN_KEY=x"}}}',
        b'{"event":"progress","fraction":0.1,"stage":"' + b"x" * 500 + b'"}',
    ):
        assert parse_event(forged) is None, forged


def test_model_info_holds_only_schema_fields():
    info = ModelInfo(format="onnx", details={"size_bytes": 10, "producer": "pytorch"})
    assert info.details == {"size_bytes": 10, "producer": "pytorch"}
    with pytest.raises(ValueError):
        ModelInfo(format="onnx", details={"environ": dict(os.environ)})
    with pytest.raises(ValueError):
        ModelInfo.model_validate({"format": "onnx", "secrets": "x"})
