"""Format detection from bytes, refusal of unsafe content, and safe archive extraction."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deepopt_core.errors import InvalidModel, UnsafeContent, UnsupportedFormat
from deepopt_core.formats.detect import detect_format, safe_extract
from tests.fixtures.models import (
    write_pickle,
    write_tar_with_symlink,
    write_torch_save_zip,
    write_zip_bomb,
    write_zip_with_member,
    write_zip_with_symlink,
)


@pytest.mark.parametrize(("key", "expected"), [("onnx", "onnx"), ("torchscript", "torchscript"),
                                               ("torch_export", "torch_export")])
def test_detects_each_format_from_bytes_not_name(digits, copy_of, key, expected):
    misnamed = copy_of(digits[key], "upload.bin")
    assert detect_format(misnamed) == expected


def test_detects_hugging_face_zip_and_tar(tiny_bert_zip, tiny_bert_tar, copy_of):
    assert detect_format(copy_of(tiny_bert_zip, "model.hf")) == "hf"
    assert detect_format(tiny_bert_tar) == "hf"


def test_detects_unpacked_hugging_face_folder(tiny_bert_zip, tmp_path):
    folder = tmp_path / "x"
    safe_extract(tiny_bert_zip, folder)
    assert detect_format(folder / "tiny-bert") == "hf"


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", bytes(range(256)) * 4, b"\x00" * 64])
def test_garbage_and_empty_are_unsupported(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(UnsupportedFormat) as info:
        detect_format(path)
    assert info.value.status == 415


def test_raw_pickle_is_unsafe(tmp_path):
    with pytest.raises(UnsafeContent) as info:
        detect_format(write_pickle(tmp_path / "model.onnx"))
    assert info.value.status == 422 and "pickle" in info.value.message


def test_torch_save_zip_is_unsafe(tmp_path):
    with pytest.raises(UnsafeContent, match="torch.save"):
        detect_format(write_torch_save_zip(tmp_path / "model.pt"))


def test_zip_of_something_else_is_unsupported(tmp_path):
    path = tmp_path / "doc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(UnsupportedFormat):
        detect_format(path)


def test_hf_folder_with_pickled_weights_only_is_unsafe(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/config.json", "{}")
        zf.writestr("m/pytorch_model.bin", b"\x80\x04junk")
    with pytest.raises(UnsafeContent, match="safetensors"):
        detect_format(path)


@pytest.mark.parametrize("member", ["../evil.txt", "m/../../evil.txt", "/etc/evil", "C:/evil.txt"])
def test_escaping_members_are_unsafe(tmp_path, member):
    with pytest.raises(UnsafeContent):
        detect_format(write_zip_with_member(tmp_path / "m.zip", member))


def test_symlink_members_are_unsafe(tmp_path):
    with pytest.raises(UnsafeContent, match="link"):
        detect_format(write_zip_with_symlink(tmp_path / "m.zip"))
    with pytest.raises(UnsafeContent, match="link"):
        detect_format(write_tar_with_symlink(tmp_path / "m.tar.gz"))


def test_zip_bomb_is_unsafe(tmp_path):
    bomb = write_zip_bomb(tmp_path / "bomb.zip", expanded_mb=32)
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(UnsafeContent, match="bomb"):
        detect_format(bomb)
    with pytest.raises(UnsafeContent):
        safe_extract(bomb, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_truncated_onnx_is_invalid(digits, tmp_path):
    data = digits["onnx"].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel, match="truncated"):
        detect_format(path)


def test_truncated_zip_is_invalid(digits, tmp_path):
    data = digits["torchscript"].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel):
        detect_format(path)


def test_pt2_with_pickled_weights_is_unsafe(digits, tmp_path):
    source = zipfile.ZipFile(digits["torch_export"])
    path = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            out.writestr(info.filename, data)
    with pytest.raises(UnsafeContent, match="pickle"):
        detect_format(path)


def test_safe_extract_unpacks_and_respects_limits(tiny_bert_zip, tiny_bert_tar, tmp_path):
    out = safe_extract(tiny_bert_zip, tmp_path / "zip")
    assert (out / "tiny-bert" / "config.json").is_file()
    out = safe_extract(tiny_bert_tar, tmp_path / "tar")
    assert (out / "tiny-bert" / "model.safetensors").is_file()
    with pytest.raises(UnsafeContent, match="more than"):
        safe_extract(tiny_bert_zip, tmp_path / "small", max_total_bytes=10_000)
    assert not any((tmp_path / "small").iterdir())


def test_safe_extract_refuses_traversal_and_links(tmp_path):
    with pytest.raises(UnsafeContent):
        safe_extract(write_zip_with_member(tmp_path / "a.zip", "../escape.txt"), tmp_path / "a")
    with pytest.raises(UnsafeContent):
        safe_extract(write_zip_with_symlink(tmp_path / "b.zip"), tmp_path / "b")
    with pytest.raises(UnsafeContent):
        safe_extract(write_tar_with_symlink(tmp_path / "c.tar.gz"), tmp_path / "c")
    assert not (tmp_path / "escape.txt").exists()


LIGHT_MODULES = [
    "deepopt_core.specs", "deepopt_core.registry", "deepopt_core.planning", "deepopt_core.result",
    "deepopt_core.errors", "deepopt_core.passes.quantize.config", "deepopt_core.passes.prune.config",
    "deepopt_core.passes.export.config", "deepopt_core.formats.detect", "deepopt_core.datasets",
    "deepopt_core.formats.onnx_inspect", "deepopt_core.formats", "deepopt_core.passes.context",
    "deepopt_core.formats.archives", "deepopt_core.formats.hf_inspect", "deepopt_core.sparsity",
]  # fmt: skip


def test_api_facing_modules_import_no_heavy_libraries():
    code = (
        "import sys\n"
        f"for name in {LIGHT_MODULES!r}: __import__(name)\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'fastapi', 'celery', 'sqlalchemy') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------------------------------
# Issue 14: what an upload may contain (docs/security.md)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_archives(tmp_path_factory):
    from tests.fixtures.hostile import real_pt2, real_torchscript

    folder = tmp_path_factory.mktemp("real")
    archives = {kind: real_torchscript(folder / f"{kind}.pt", kind) for kind in ("scripted", "traced", "quantized")}
    archives["pt2"] = real_pt2(folder / "model.pt2")
    return archives


@pytest.mark.parametrize("kind", ["scripted", "traced", "quantized", "pt2"])
def test_real_torch_saves_are_accepted_and_load(real_archives, kind):
    from deepopt_core.formats.torch_export import load_program
    from deepopt_core.formats.torchscript import load_torchscript

    path = real_archives[kind]
    if kind == "pt2":
        assert detect_format(path) == "torch_export"
        assert load_program(path).graph_signature.user_inputs
    else:
        assert detect_format(path) == "torchscript"
        assert load_torchscript(path).forward is not None


def test_real_transformers_folder_is_accepted(tiny_bert_zip, tiny_bert_tar, tmp_path):
    assert detect_format(tiny_bert_zip) == "hf" and detect_format(tiny_bert_tar) == "hf"
    folder = safe_extract(tiny_bert_zip, tmp_path / "x") / "tiny-bert"
    assert detect_format(folder) == "hf"


def test_pt2_with_dot_folder_and_legacy_pickled_weights_is_refused(tmp_path):
    from tests.fixtures.hostile import TouchPayload, pt2_dot_folder_legacy_weights

    path = pt2_dot_folder_legacy_weights(tmp_path, TouchPayload(tmp_path / "pwned"))
    with pytest.raises(UnsafeContent, match="ambiguous member names"):
        detect_format(path)
    assert not (tmp_path / "pwned").exists()


def test_torch_side_check_refuses_names_torch_resolves_differently(tmp_path):
    """The child's own check (torch's reader) refuses the archive even without detect_format's verdict."""
    from deepopt_core.formats.torch_common import check_torch_archive
    from tests.fixtures.hostile import TouchPayload, pt2_dot_folder_legacy_weights, real_pt2, rewrite_zip

    dotted = pt2_dot_folder_legacy_weights(tmp_path, TouchPayload(tmp_path / "pwned"))
    with pytest.raises(UnsafeContent, match="ambiguous member names"):
        check_torch_archive(dotted, "torch_export")
    source = real_pt2(tmp_path / "real.pt2")
    top = zipfile.ZipFile(source).namelist()[0].split("/")[0]
    # A legacy weights file whose name differs only in case: miniz's lookup finds it, a case-sensitive check not.
    cased = rewrite_zip(source, tmp_path / "cased.pt2", add=[(f"{top}/DATA/Weights/model.PT", b"x")])
    with pytest.raises(UnsafeContent, match="pickled payloads"):
        check_torch_archive(cased, "torch_export")
    assert not (tmp_path / "pwned").exists()


def test_pt2_with_root_level_legacy_members_is_refused(tmp_path):
    from tests.fixtures.hostile import TouchPayload, pt2_with_root_legacy_members

    with pytest.raises(UnsafeContent, match="ambiguous member names"):
        detect_format(pt2_with_root_legacy_members(tmp_path, TouchPayload(tmp_path / "pwned")))


def test_pt2_with_aotinductor_package_is_refused(tmp_path):
    from tests.fixtures.hostile import pt2_with_aotinductor, real_pt2, rewrite_zip

    with pytest.raises(UnsafeContent, match="native code"):
        detect_format(pt2_with_aotinductor(tmp_path))
    source = real_pt2(tmp_path / "real.pt2")
    top = zipfile.ZipFile(source).namelist()[0].split("/")[0]
    package = rewrite_zip(source, tmp_path / "aoti.pt2", add=[(f"{top}/data/aotinductor/model/weights.json", b"{}")])
    with pytest.raises(UnsafeContent, match="AOTInductor"):
        detect_format(package)


@pytest.mark.parametrize(("member", "reason"), [
    ("data/constants/model.pt", "pickled payloads"), ("data/weights/extra.pkl", "pickled payloads"),
    ("data/constants/custom_obj_0", "custom objects"), ("data/constants/opaque_obj_0", "custom objects"),
    ("data/sample_inputs/nested/model.pt", "pickled payloads"),
])  # fmt: skip
def test_pt2_pickle_members_are_refused(tmp_path, member, reason):
    from tests.fixtures.hostile import real_pt2, rewrite_zip

    source = real_pt2(tmp_path / "real.pt2")
    top = zipfile.ZipFile(source).namelist()[0].split("/")[0]
    with pytest.raises(UnsafeContent, match=reason):
        detect_format(rewrite_zip(source, tmp_path / "x.pt2", add=[(f"{top}/{member}", b"\x80\x02N.")]))


def test_pt2_config_naming_an_opaque_object_is_refused(tmp_path):
    from tests.fixtures.hostile import real_pt2, rewrite_zip

    source = real_pt2(tmp_path / "real.pt2")
    top = zipfile.ZipFile(source).namelist()[0].split("/")[0]
    config = json.loads(zipfile.ZipFile(source).read(f"{top}/data/constants/model_constants_config.json"))
    config["config"]["c"] = {"path_name": "OPAQUE_OBJ_0", "use_pickle": False}
    path = rewrite_zip(source, tmp_path / "x.pt2",
                       replace={"data/constants/model_constants_config.json": json.dumps(config).encode()})
    with pytest.raises(UnsafeContent, match="pickle"):
        detect_format(path)


@pytest.mark.parametrize("names", [
    ["m/version", "m/x", "m/x"],                      # raw duplicate
    ["m/version", "m/x", "m/./x"],                    # duplicate once normalised
])  # fmt: skip
def test_duplicate_member_names_are_refused_in_any_archive(tmp_path, names):
    import warnings

    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            archive.writestr(name, b"x")
    with pytest.raises(UnsafeContent, match="ambiguous member names"):
        detect_format(path)


def test_pt2_with_duplicate_member_is_refused(tmp_path):
    from tests.fixtures.hostile import pt2_with_duplicate_member

    with pytest.raises(UnsafeContent, match="ambiguous member names"):
        detect_format(pt2_with_duplicate_member(tmp_path))


@pytest.mark.parametrize("names", [
    ["e/archive_format", "e/models/model.json", "E/ARCHIVE_FORMAT"],   # the same name ignoring case
    ["e/archive_format", "e/models/model.json", "f/version"],          # two top folders
    ["e/archive_format", "e/models//model.json"],                      # an empty component
    ["e/archive_format", "e/models/", "e/models/model.json"],          # a folder entry
    ["/e/archive_format", "/e/models/model.json"],                     # a leading slash
])  # fmt: skip
def test_canonical_torch_names_are_required(names):
    from deepopt_core.formats.torch_archive import canonical_top

    with pytest.raises(UnsafeContent, match="ambiguous member names"):
        canonical_top(names)
    assert canonical_top(["e/archive_format", "e/.data/version", "e/models/model.json"]) == "e"


def test_torchscript_with_dot_names_is_refused(tmp_path):
    from tests.fixtures.hostile import torchscript_dot_names

    with pytest.raises(UnsafeContent, match="ambiguous member names"):
        detect_format(torchscript_dot_names(tmp_path))


def test_torchscript_pickle_with_foreign_global_is_refused(tmp_path):
    from tests.fixtures.hostile import TouchPayload, torchscript_with_pickle_payload

    with pytest.raises(UnsafeContent, match=r"references io\.open"):
        detect_format(torchscript_with_pickle_payload(tmp_path, TouchPayload(tmp_path / "pwned")))
    assert not (tmp_path / "pwned").exists()


def test_torchscript_code_reading_files_is_refused(tmp_path):
    from tests.fixtures.hostile import torchscript_reading_files

    with pytest.raises(UnsafeContent, match="from_file"):
        detect_format(torchscript_reading_files(tmp_path))


@pytest.mark.parametrize(("code", "allowed"), [
    ("y = ops.quantized.linear_dynamic(x, p)", True),
    ("_0 = __torch__.torch.classes.quantized.Conv2dPackedParamsBase", True),
    ("ops.prim.RaiseException(_0)", True),
    ("y = ops.my_lib.run(x)", False),
    ("y = torch.ops . my_lib.run(x)", False),
    ("torch.save(x, \"/tmp/out\")", False),
    ("p : __torch__.torch.classes.dist_c10d.ProcessGroup", False),
    ("y = ops.aten.from_file(\"/etc/passwd\")", False),
])  # fmt: skip
def test_torchscript_code_rules(code, allowed):
    from deepopt_core.formats.torch_archive import check_torchscript_code

    if allowed:
        check_torchscript_code("m/code/__torch__.py", code)
    else:
        with pytest.raises(UnsafeContent):
            check_torchscript_code("m/code/__torch__.py", code)


def test_torchscript_pickle_rules():
    import pickle

    from deepopt_core.formats.torch_archive import check_pickle_globals

    check_pickle_globals("m/data.pkl", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00.")
    with pytest.raises(UnsafeContent, match="STACK_GLOBAL"):
        check_pickle_globals("m/data.pkl", pickle.dumps(Path("x").touch, protocol=4))
    with pytest.raises(UnsafeContent, match="torch.classes"):
        check_pickle_globals("m/data.pkl", b"\x80\x02c__torch__.torch.classes.dist_c10d\nProcessGroup\nq\x00.")


@pytest.mark.parametrize(("config", "tokenizer", "files", "reason"), [
    ({"auto_map": {"AutoModel": "modeling_x.MyModel"}}, None, [("modeling_x.py", b"import os")], "custom code"),
    ({"auto_map": {"AutoModel": "modeling_x.MyModel"}}, None, [], "auto_map"),
    (None, {"auto_map": {"AutoTokenizer": ["tok.MyTok", None]}}, [], "auto_map"),
    (None, {"tokenizer_class": "os.system"}, [], "not a plain class name"),
    ({"trust_remote_code": True}, None, [], "trust_remote_code"),
    (None, None, [("training_args.bin", b"\x80\x02N.")], r"remove tiny-bert/training_args\.bin"),
    (None, None, [("sub/optimizer.pt", b"\x80\x02N.")], "optimizer.pt"),
    (None, None, [("libx.so", b"\x7fELF")], "native code"),
])  # fmt: skip
def test_hugging_face_folder_rules(tiny_bert_zip, tmp_path, config, tokenizer, files, reason):
    from tests.fixtures.hostile import hf_variant

    path = hf_variant(tiny_bert_zip, tmp_path / "m.zip", config_update=config, tokenizer_update=tokenizer, add=files)
    with pytest.raises(UnsafeContent, match=reason):
        detect_format(path)


def test_hugging_face_tar_and_folder_rules(tiny_bert_zip, tmp_path):
    import tarfile

    folder = safe_extract(tiny_bert_zip, tmp_path / "x") / "tiny-bert"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(UnsafeContent, match="auto_map"):
        detect_format(folder)
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="tiny-bert")
    with pytest.raises(UnsafeContent, match="auto_map"):
        detect_format(tmp_path / "m.tar.gz")


def test_onnx_custom_domain_and_hidden_external_data_are_refused(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from deepopt_core.formats.onnx_inspect import external_locations, inspect_onnx
    from tests.fixtures.hostile import custom_domain_onnx

    path = tmp_path / "custom.onnx"
    path.write_bytes(custom_domain_onnx())
    assert detect_format(path) == "onnx"
    with pytest.raises(UnsafeContent, match="com.attacker.ops"):
        inspect_onnx(path)
    # A sparse initializer inside an If branch, stored as external data: found, and refused for one file.
    values = numpy_helper.from_array(np.ones(1, np.float32), "s")
    values.data_location = TensorProto.EXTERNAL
    values.ClearField("raw_data")
    entry = values.external_data.add()
    entry.key, entry.value = "location", "../../secret.bin"
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "s_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    branch = helper.make_graph([helper.make_node("Identity", ["s"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
                               sparse_initializer=[sparse])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert set(external_locations(model)) == {"../../secret.bin"}
    path = tmp_path / "sparse.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsafeContent, match="outside the model's folder"):
        inspect_onnx(path)
