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
