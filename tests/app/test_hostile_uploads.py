"""Hostile uploads: each gets a clear 4xx problem naming `file`, nothing is kept, nothing is executed."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.app.test_models import assert_problem, upload
from tests.fixtures.models import write_tar_with_symlink, write_zip_bomb, write_zip_with_symlink


class _Payload:
    """Unpickling this would create the marker file: the test proves nothing unpickles an upload."""

    marker = ""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.marker),))


def _model(inputs: list, initializers: list) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", initializers[0].name], ["y"])], "g", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def absurd_shape_onnx() -> bytes:
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    return _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [10**12, 4])], [weight])


def escaping_external_data_onnx() -> bytes:
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    return _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [weight])


def lying_initializer_onnx() -> bytes:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000], raw_data=b"\0" * 16)
    return _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100000])], [weight])


def torch_save_zip_that_runs_code(marker: Path) -> bytes:
    _Payload.marker = str(marker)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps({"weights": _Payload()}))
        archive.writestr("model/byteorder", "little")
        archive.writestr("model/version", "3\n")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "build", "status"),
    [
        ("absurd declared shape", lambda tmp: absurd_shape_onnx(), 422),
        ("external data outside its folder", lambda tmp: escaping_external_data_onnx(), 422),
        ("initializer smaller than its shape", lambda tmp: lying_initializer_onnx(), 422),
        ("zip bomb", lambda tmp: write_zip_bomb(tmp / "bomb.zip", expanded_mb=64).read_bytes(), 422),
        ("zip with a symlink", lambda tmp: write_zip_with_symlink(tmp / "link.zip").read_bytes(), 422),
        ("tar with a symlink", lambda tmp: write_tar_with_symlink(tmp / "link.tar.gz").read_bytes(), 422),
    ],
)
def test_hostile_model_uploads(client: httpx.Client, app_env: Path, tmp_path: Path, name: str, build, status: int
                               ) -> None:
    problem = assert_problem(upload(client, build(tmp_path), "model.bin"), status, "file")
    assert problem["detail"]
    assert client.get("/v1/models").json()["items"] == []
    assert list((app_env / "blobs" / "tmp").iterdir()) == []


def test_a_pickle_that_runs_code_is_never_unpickled(client: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    assert_problem(upload(client, torch_save_zip_that_runs_code(marker), "model.pt"), 422, "file")
    _Payload.marker = str(marker)
    assert_problem(upload(client, pickle.dumps(_Payload()), "model.pkl"), 422, "file")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------
# Issue 14: archives built so that what is checked is not what is loaded (rebuilt from real saves each run)
# --------------------------------------------------------------------------------------------------------------

_SECRET = "hostile-upload-secret-0f3c9a"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import warnings

    from tests.fixtures.models import build_tiny_bert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_tiny_bert(tmp_path_factory.mktemp("bert"))


def _hostile_cases() -> list:  # type: ignore[type-arg]
    """(name, upload file name, what the refusal says, build(workdir, marker, tiny_bert_zip) -> path or bytes)."""
    from tests.fixtures import hostile as h

    ambiguous = "ambiguous member names"
    return [
        ("pt2 ./archive_format + legacy pickled weights", "model.pt2", ambiguous,
         lambda tmp, marker, bert: h.pt2_dot_folder_legacy_weights(tmp, h.TouchPayload(marker))),
        ("pt2 ./archive_format + forged description", "model.pt2", ambiguous,
         lambda tmp, marker, bert: h.pt2_dot_folder_legacy_weights(tmp, h.ForgedDescriptionPayload(marker))),
        ("pt2 with an AOTInductor package", "model.pt2", "native code",
         lambda tmp, marker, bert: h.pt2_with_aotinductor(tmp)),
        ("pt2 with root-level legacy members", "model.pt2", ambiguous,
         lambda tmp, marker, bert: h.pt2_with_root_legacy_members(tmp, h.TouchPayload(marker))),
        ("pt2 with a duplicate member", "model.pt2", ambiguous,
         lambda tmp, marker, bert: h.pt2_with_duplicate_member(tmp)),
        ("TorchScript with ./ names", "model.pt", ambiguous, lambda tmp, marker, bert: h.torchscript_dot_names(tmp)),
        ("TorchScript data.pkl payload", "model.pt", "io.open",
         lambda tmp, marker, bert: h.torchscript_with_pickle_payload(tmp, h.TouchPayload(marker))),
        ("TorchScript calling torch.from_file", "model.pt", "from_file",
         lambda tmp, marker, bert: h.torchscript_reading_files(tmp)),
        ("HF modeling_x.py + auto_map", "model.zip", "custom code", lambda tmp, marker, bert: h.hf_variant(
            bert, tmp / "m.zip", config_update={"auto_map": {"AutoModel": "modeling_x.Model"}},
            add=[("modeling_x.py", f"open({str(marker)!r}, 'w')\n".encode())])),
        ("HF tokenizer_config auto_map", "model.zip", "auto_map", lambda tmp, marker, bert: h.hf_variant(
            bert, tmp / "m.zip", tokenizer_update={"auto_map": {"AutoTokenizer": ["tok.Tok", None]}})),
        ("HF .bin beside safetensors", "model.zip", "remove tiny-bert/training_args.bin",
         lambda tmp, marker, bert: h.hf_variant(
             bert, tmp / "m.zip", add=[("training_args.bin", h.payload_pickle(h.TouchPayload(marker)))])),
        ("HF with a .so", "model.zip", "native code", lambda tmp, marker, bert: h.hf_variant(
            bert, tmp / "m.zip", add=[("libtokenizer.so", b"\x7fELF" + b"\x00" * 60)])),
        ("ONNX custom-op domain", "model.onnx", "custom operator", lambda tmp, marker, bert: h.custom_domain_onnx()),
    ]


@pytest.mark.parametrize(("name", "filename", "reason", "build"), _hostile_cases(),
                         ids=[case[0] for case in _hostile_cases()])
def test_archives_that_would_run_code_are_refused_at_upload(
    client: httpx.Client, app_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert: Path,
    name: str, filename: str, reason: str, build,  # type: ignore[no-untyped-def]
) -> None:
    import os

    monkeypatch.setenv("HOSTILE_TEST_SECRET", _SECRET)
    marker = tmp_path / "pwned"
    workdir = tmp_path / "build"
    workdir.mkdir()
    built = build(workdir, marker, tiny_bert)
    data = built if isinstance(built, bytes) else Path(built).read_bytes()
    response = upload(client, data, filename)
    problem = assert_problem(response, 422, "file")
    assert reason in problem["detail"], problem["detail"]
    assert not marker.exists(), f"{name}: the payload ran"
    secrets = [_SECRET, *(os.environ[k] for k in ("DEEPOPT_API_KEYS", "DEEPOPT_ADMIN_KEY") if os.environ.get(k))]
    assert not any(secret in response.text for secret in secrets)
    assert client.get("/v1/models").json()["items"] == []
    assert [p for p in (app_env / "blobs").rglob("*") if p.is_file()] == []
