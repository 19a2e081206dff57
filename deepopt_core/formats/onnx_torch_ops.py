"""Which ONNX ops the conversion to PyTorch handles, known without importing torch (for the submit check).

:mod:`deepopt_core.formats.onnx_torch` converts with onnx2torch, whose converters are registered per op and per
op version (the ``since_version`` an opset maps to); importing it imports torch, which the API never does. This
table is onnx2torch 1.5.15's registry with the converters that module adds (opset-16 comparisons, every
``Flatten``, the opset-18+ ``Reduce*`` ops), so that :func:`deepopt_core.planning.onnx_import_problem` refuses an
upload with an op it lacks at submit, from the stored inspection (``op_types``, ``opset``), instead of the job
failing after acceptance. ``tests/deepopt_core/test_onnx_dynamo_cnns.py`` checks that it equals the live
registry, so that an upgrade of onnx2torch cannot leave it stale.

``NonMaxSuppression`` and ``RoiAlign`` are left out: onnx2torch runs them with torchvision, which this project
does not install (its PyPI wheels are CUDA builds).
"""

from __future__ import annotations

from collections.abc import Iterable

CONVERTIBLE_OPS: dict[str, tuple[int, ...]] = {
    "Abs": (6, 13), "Acos": (7,), "Add": (1, 6, 7, 13, 14), "And": (1, 7), "ArgMax": (11, 12, 13),
    "ArgMin": (11, 12, 13), "Asin": (7,), "Atan": (7,), "AveragePool": (7, 10, 11),
    "BatchNormalization": (9, 14, 15), "Cast": (9, 13), "Ceil": (6, 13), "Celu": (12,), "Clip": (6, 11, 12, 13),
    "Concat": (4, 11, 13), "Constant": (9, 11, 12, 13), "ConstantOfShape": (9,), "Conv": (1, 11),
    "ConvTranspose": (1, 11), "Cos": (7,), "CumSum": (11, 14), "DepthToSpace": (11, 13), "Div": (1, 6, 7, 13, 14),
    "Dropout": (10, 12, 13), "Einsum": (12,), "Elu": (6,), "Equal": (7, 11, 13), "Erf": (9, 13), "Exp": (6, 13),
    "Expand": (8, 13), "EyeLike": (9,), "Flatten": (1, 9, 11, 13, 21, 23, 24, 25), "Floor": (6, 13),
    "Gather": (1, 11, 13), "GatherElements": (11, 13), "GatherND": (11, 12, 13), "Gemm": (9, 11, 13),
    "GlobalAveragePool": (1,), "Greater": (7, 9, 13), "GreaterOrEqual": (12, 16), "HardSigmoid": (1, 6),
    "HardSwish": (14,), "Identity": (1, 13, 14, 16), "InstanceNormalization": (1, 6), "IsInf": (10,),
    "IsNaN": (13,), "LRN": (1, 13), "LayerNormalization": (17,), "LeakyRelu": (1, 6, 16), "Less": (7, 9, 13),
    "LessOrEqual": (12, 16), "Log": (6, 13), "LogSoftmax": (1, 11, 13), "MatMul": (1, 9, 13), "Max": (8, 12, 13),
    "MaxPool": (8, 10, 11, 12), "Mean": (8, 13), "Min": (8, 12, 13), "Mod": (10, 13), "Mul": (1, 6, 7, 13, 14),
    "Neg": (1, 6, 13), "NonZero": (13,), "Not": (1,), "Or": (1, 7), "PRelu": (7, 9, 16), "Pad": (2, 11, 13),
    "Pow": (1, 7, 12, 13, 15), "Range": (11,), "Reciprocal": (1, 6, 13), "ReduceL1": (1, 11, 13, 18),
    "ReduceL2": (1, 11, 13, 18), "ReduceLogSum": (1, 11, 13, 18, 28), "ReduceLogSumExp": (1, 11, 13, 18, 28),
    "ReduceMax": (1, 11, 12, 13, 18, 20), "ReduceMean": (1, 11, 13, 18), "ReduceMin": (1, 11, 12, 13, 18, 20),
    "ReduceProd": (1, 11, 13, 18), "ReduceSum": (1, 11, 13), "ReduceSumSquare": (1, 11, 13, 18),
    "Relu": (6, 13, 14), "Reshape": (5, 13, 14), "Resize": (10, 11, 13), "Round": (11,), "ScatterND": (11, 13, 16),
    "Selu": (6,), "Shape": (1, 13, 15), "Sigmoid": (1, 6, 13), "Sign": (9, 13), "Sin": (7,),
    "Slice": (9, 10, 11, 13), "Softmax": (1, 11, 13), "Softplus": (1,), "Softsign": (1,), "Split": (2, 11, 13),
    "Sqrt": (1, 6, 13), "Squeeze": (1, 11, 13, 21), "Sub": (1, 6, 7, 13, 14), "Sum": (8, 13), "Tan": (7,),
    "Tanh": (6, 13), "Tile": (6, 13), "TopK": (1, 10, 11), "Transpose": (1, 13), "Unsqueeze": (1, 11, 13),
    "Where": (9, 16), "Xor": (1, 7),
}
# onnx2torch converts these with torchvision, which this project does not install.
NEEDS_TORCHVISION = frozenset({"NonMaxSuppression", "RoiAlign"})


def unconvertible_ops(op_types: Iterable[str], opset: int | None) -> list[str]:
    """The ops of a graph (ai.onnx names; other domains as ``domain.op``) that have no converter at `opset`.

    Args:
        op_types: the op types the graph uses (the inspection's ``op_types`` keys).
        opset: the graph's ai.onnx opset; None: only the op names are checked.

    Returns:
        The missing ones, sorted, as ``"Op"`` or ``"Op (version N)"`` when only that version is missing.
    """
    import onnx

    missing: list[str] = []
    for op in sorted(set(op_types)):
        versions = CONVERTIBLE_OPS.get(op)
        if versions is None:
            missing.append(op)
            continue
        if opset is None:
            continue
        try:
            since = onnx.defs.get_schema(op, max_inclusive_version=opset).since_version
        except onnx.defs.SchemaError:  # an op newer than the graph's opset: the converter would not find it either
            missing.append(op)
            continue
        if since not in versions:
            missing.append(f"{op} (version {since})")
    return missing
