"""Inspection of every format, ONNX external data rules, and the no-unpickling traced-input reader."""

from __future__ import annotations

import pickle
import warnings
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deepopt_core.errors import InvalidModel, UnsafeContent
from deepopt_core.formats import inspect_model
from deepopt_core.formats.onnx_inspect import inspect_onnx
from deepopt_core.formats.pickle_meta import read_pickle_structure, traced_input_metas

DIGITS_PARAMS = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_inspect_onnx_digits(digits):
    info = inspect_onnx(digits["onnx"])
    assert info.format == "onnx"
    assert [(t.name, t.shape, t.dtype) for t in info.inputs] == [("input", ["batch", 64], "float32")]
    assert [(t.name, t.shape) for t in info.outputs] == [("logits", ["batch", 10])]
    assert info.num_parameters == DIGITS_PARAMS
    assert info.op_types == {"Gemm": 3, "Relu": 2}
    assert info.prunable_layers == 3
    assert info.opset == 17


def _sparse_model(tmp_path, dims, values, indices, external=None):
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.asarray(values, np.float32), "w"),
                                       numpy_helper.from_array(np.asarray(indices, np.int64), "w_indices"), dims)
    if external:
        sparse.values.data_location = TensorProto.EXTERNAL
        entry = sparse.values.external_data.add()
        entry.key, entry.value = "location", external
        sparse.values.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[1]])], sparse_initializer=[sparse],
    )  # fmt: skip
    path = tmp_path / "sparse.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_onnx_sparse_initializers_are_read_dense_within_limits(tmp_path):
    """A pruned artifact written with sparse initializers inspects like its dense form; a sparse tensor that would
    expand past the limits, point outside its shape or read an external file is refused."""
    from deepopt_core.formats.onnx_inspect import load_onnx
    from deepopt_core.sparsity import onnx_sparsity

    path = _sparse_model(tmp_path, [8, 4], [1.0, -2.0, 3.0], [0, 13, 31])
    info = inspect_onnx(path)
    assert info.num_parameters == 32 and info.prunable_layers == 1
    model = load_onnx(path)
    assert not model.graph.sparse_initializer and numpy_helper.to_array(model.graph.initializer[0])[3, 1] == -2.0
    assert onnx_sparsity(model).layers == {"MatMul_0": pytest.approx(29 / 32)}
    for dims, values, indices, words in (([2**16, 2**16], [1.0], [0], "more than"), ([8, 4], [1.0], [32], "outside"),
                                         ([8, 4], [1.0, 2.0], [0], "outside")):
        with pytest.raises(InvalidModel, match=words):
            load_onnx(_sparse_model(tmp_path, dims, values, indices))
    with pytest.raises(UnsafeContent, match="outside"):
        load_onnx(_sparse_model(tmp_path, [8, 4], [1.0], [0], external="/etc/passwd"))
    with pytest.raises(InvalidModel, match="external data"):
        load_onnx(_sparse_model(tmp_path, [8, 4], [1.0], [0], external="w.bin"))


def _external_model(folder, location):
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], initializer=[weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    tensor.ClearField("raw_data")
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    (folder / "weights.bin").write_bytes(np.ones((4, 2), np.float32).tobytes())
    return path


def test_onnx_external_data_rules(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    with pytest.raises(InvalidModel, match="not part of the upload"):
        inspect_onnx(path)
    assert inspect_onnx(path, allow_external_data=True).num_parameters == 8
    for location in ("../weights.bin", "/etc/passwd", "sub/../../x.bin"):
        with pytest.raises(UnsafeContent, match="outside"):
            inspect_onnx(_external_model(tmp_path, location), allow_external_data=True)


def test_garbage_protobuf_is_invalid(tmp_path, digits):
    path = tmp_path / "bad.onnx"
    data = bytearray(digits["onnx"].read_bytes())
    data[40:80] = b"\xff" * 40
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidModel):
        inspect_onnx(path)


def test_inspect_torchscript_reads_traced_shapes(digits):
    info = inspect_model(digits["torchscript"])
    assert info.format == "torchscript"
    assert [(t.name, t.shape, t.dtype) for t in info.inputs] == [("input", ["batch", 64], "float32")]
    assert info.num_parameters == DIGITS_PARAMS
    assert info.prunable_layers == 3
    assert info.details["traced_input_shapes"] == [[2, 64]]


def test_scripted_module_has_unknown_shapes(tmp_path):
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.fc(features)

    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Net()).save(str(path))
    info = inspect_model(path)
    assert [(t.name, t.shape) for t in info.inputs] == [("features", None)]
    assert info.num_parameters == 8


def test_inspect_torch_export_symbolic_batch(digits):
    info = inspect_model(digits["torch_export"])
    assert info.format == "torch_export"
    (tensor,) = info.inputs
    assert tensor.name == "input" and tensor.dtype == "float32"
    assert isinstance(tensor.shape[0], str) and tensor.shape[1] == 64
    assert info.num_parameters == DIGITS_PARAMS
    assert info.op_types["aten.linear"] == 3


def test_inspect_hf_without_torch_weights_loading(tiny_bert_zip, tiny_bert_tar):
    info = inspect_model(tiny_bert_zip)
    assert info.format == "hf"
    assert info.architecture == "BertForSequenceClassification"
    assert [t.name for t in info.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(t.dtype == "int64" and t.shape == ["batch", "sequence"] for t in info.inputs)
    assert info.details["has_tokenizer"] is True
    assert info.num_parameters > 20_000
    assert info.prunable_layers == 14  # 6 Linear per layer x 2, pooler, classifier
    assert inspect_model(tiny_bert_tar).details["has_tokenizer"] is False


def test_inspect_rejects_wrong_expected_format(digits):
    with pytest.raises(InvalidModel, match="not torchscript"):
        inspect_model(digits["onnx"], "torchscript")


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/deepopt-should-not-exist", "w"))


def test_pickle_reader_never_calls_anything(tmp_path):
    payload = pickle.dumps({"forward": [_Boom()]}, protocol=2)
    assert traced_input_metas(payload) is None
    assert read_pickle_structure(pickle.dumps([1, "a", (2.5, None)], protocol=2)) == [1, "a", (2.5, None)]
    import os

    assert not os.path.exists("/tmp/deepopt-should-not-exist")


def test_traced_inputs_of_digits(digits):
    with zipfile.ZipFile(digits["torchscript"]) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/traced_inputs.pkl"))
        metas = traced_input_metas(archive.read(name))
    assert metas is not None and metas[0].shape == (2, 64) and metas[0].dtype == "float32"


def test_onnx_checker_failure_is_invalid(tmp_path):
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InvalidModel, match="invalid"):
        inspect_onnx(path)


# --------------------------------------------------------------------------------------------------------------
# Hugging Face architectures: inputs, outputs and facts read from config.json alone
# --------------------------------------------------------------------------------------------------------------

_TOKENS = ("input_ids", "attention_mask")
_BERT_TOKENS = (*_TOKENS, "token_type_ids")
_POOLED = ("last_hidden_state", "pooler_output")
# name -> (input names, pixel_values shape or None, output names, task)
HF_EXPECTED: dict[str, tuple[tuple[str, ...], list | None, tuple[str, ...], str]] = {
    "bert": (_BERT_TOKENS, None, _POOLED, "feature-extraction"),
    "bert-classifier": (_BERT_TOKENS, None, ("logits",), "text-classification"),
    "bert-qa": (_BERT_TOKENS, None, ("start_logits", "end_logits"), "question-answering"),
    "distilbert": (_TOKENS, None, ("logits",), "text-classification"),
    "roberta": (_TOKENS, None, _POOLED, "feature-extraction"),
    "gpt2": (_TOKENS, None, ("logits",), "text-generation"),
    "llama": (_TOKENS, None, ("logits",), "text-generation"),
    "llama-tied": (_TOKENS, None, ("logits",), "text-generation"),
    "qwen2": (_TOKENS, None, ("logits",), "text-generation"),
    "convnext": (("pixel_values",), ["batch", 3, 32, 32], ("logits",), "image-classification"),
    "vit": (("pixel_values",), ["batch", 3, 32, 32], _POOLED, "image-feature-extraction"),
    "resnet": (("pixel_values",), ["batch", 3, "height", "width"], _POOLED, "image-feature-extraction"),
    "mobilenet_v2": (("pixel_values",), ["batch", 3, 32, 32], _POOLED, "image-feature-extraction"),
    "efficientnet": (("pixel_values",), ["batch", 3, 32, 32], _POOLED, "image-feature-extraction"),
}


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from tests.fixtures.hf_architectures import ARCHITECTURES, save_architecture

    root = tmp_path_factory.mktemp("hf-architectures")
    return {name: save_architecture(name, root / name) for name in ARCHITECTURES}


@pytest.mark.parametrize("name", sorted(HF_EXPECTED))
def test_hf_architecture_inputs_and_outputs(name, hf_folders, tmp_path):
    """Each family's inspected inputs and outputs are what the loaded model takes and returns, in order."""
    import torch

    from deepopt_core.evaluate.inputs import synthetic_feed
    from deepopt_core.formats.hf import load_hf

    inputs, pixels, outputs, task = HF_EXPECTED[name]
    info = inspect_model(hf_folders[name])
    assert tuple(t.name for t in info.inputs) == inputs
    if pixels is None:
        assert all(t.shape == ["batch", "sequence"] and t.dtype == "int64" for t in info.inputs)
    else:
        assert info.inputs[0].shape == pixels and info.inputs[0].dtype == "float32"
        assert info.details["num_channels"] == 3
    assert tuple(t.name for t in info.outputs) == outputs
    assert info.details["task"] == task and info.details["dtype"] == "float32"

    wrapper, _ = load_hf(hf_folders[name], tmp_path)
    assert tuple(wrapper.input_names) == inputs
    feed = synthetic_feed(info, 2, vocab_size=int(info.details.get("vocab_size") or 0))
    with torch.no_grad():
        results = wrapper(*(torch.from_numpy(feed[n]) for n in inputs))
    assert tuple(wrapper.output_names) == outputs and len(results) == len(outputs)


def test_causal_lm_facts_from_config(hf_folders):
    gpt2 = inspect_model(hf_folders["gpt2"]).details
    assert gpt2 | {"files": None} == gpt2 | {
        "files": None, "task": "text-generation", "vocab_size": 64, "context_length": 64, "hidden_size": 16,
        "num_layers": 1, "num_attention_heads": 2, "tie_word_embeddings": True, "dtype": "float32",
    }
    assert "num_key_value_heads" not in gpt2  # GPT-2 has no grouped-query attention
    llama = inspect_model(hf_folders["llama"]).details
    assert (llama["num_key_value_heads"], llama["num_attention_heads"], llama["tie_word_embeddings"]) == (1, 2, False)
    assert llama["context_length"] == 64 and llama["task"] == "text-generation"
    assert inspect_model(hf_folders["llama-tied"]).details["tie_word_embeddings"] is True


def test_hostile_config_sizes_are_dropped_not_stored(tmp_path, hf_folders):
    """Sizes that are not plausible counts (strings, floats, huge) are left out instead of failing validation."""
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(hf_folders["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(num_hidden_layers="many", max_position_embeddings=1e30, num_key_value_heads=2**40,
                  tie_word_embeddings="yes")
    (folder / "config.json").write_text(json.dumps(config))
    details = inspect_model(folder).details
    assert not {"num_layers", "context_length", "num_key_value_heads", "tie_word_embeddings"} & set(details)
