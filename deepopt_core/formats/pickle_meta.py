"""Read tensor shapes and dtypes out of a TorchScript pickle without unpickling it.

TorchScript archives of traced modules keep the example inputs in ``<root>/traced_inputs.pkl``. Rather than run
any unpickler, this walks the opcode stream (``pickletools.genops``) on a small stack machine that understands
containers, strings, numbers and the two calls a tensor needs (``_rebuild_tensor_v2`` over a persistent storage
id), and never imports or calls anything. Anything it does not understand makes it give up (returns None).
"""

from __future__ import annotations

import logging
import pickletools
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("deepopt.formats")

_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}  # fmt: skip
_TORCH_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}
_MAX_OPS = 200_000


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of a pickled tensor."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Opaque:
    """A value the reader does not model (the result of an unknown call)."""


class _Mark:
    pass


_MARK = _Mark()


def _call(func: Any, args: tuple[Any, ...]) -> Any:
    if not isinstance(func, _Global):
        return _Opaque()
    if func.name == "_rebuild_tensor_v2" and len(args) >= 3:
        storage, size = args[0], args[2]
        dtype = "unknown"
        if isinstance(storage, tuple) and len(storage) >= 2 and isinstance(storage[1], _Global):
            kind = storage[1].name
            dtype = _STORAGE_DTYPES.get(kind, kind if kind in _TORCH_DTYPES else "unknown")
        if isinstance(size, tuple) and all(isinstance(d, int) for d in size):
            return TensorMeta(dtype, size)
        return _Opaque()
    if func.name == "restore_type_tag" and args:
        return args[0]
    if func.name == "OrderedDict" and not args:
        return {}
    return _Opaque()


def read_pickle_structure(data: bytes) -> Any:  # noqa: C901  (one branch per opcode family)
    """Interpret a pickle's opcodes into dicts, lists, tuples, scalars and :class:`TensorMeta`, calling nothing.

    Returns:
        The value, or None when the stream uses anything beyond what TorchScript writes for tensors.
    """
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(data)):
            if count > _MAX_OPS:
                return None
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                return stack.pop() if stack else None
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(_Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_Global(str(module), str(attr)))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(str(arg))] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[int(str(arg))])
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE", "LIST", "DICT"):
                items = _pop_mark(stack)
                if name == "DICT":
                    stack.append(dict(zip(items[::2], items[1::2], strict=True)))
                else:
                    stack.append(tuple(items) if name == "TUPLE" else list(items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1",
                          "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT", "SHORT_BINBYTES",
                          "BINBYTES", "BINSTRING", "SHORT_BINSTRING"):
                stack.append(arg)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name == "BINPERSID":
                pid = stack.pop()
                stack.append(pid)
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(_call(func, args if isinstance(args, tuple) else ()))
            elif name == "BUILD":
                stack.pop()
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = _pop_mark(stack)
                stack[-1].extend(items)
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = _pop_mark(stack)
                stack[-1].update(zip(items[::2], items[1::2], strict=True))
            else:
                log.debug("pickle opcode %s not modelled; giving up", name)
                return None
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        log.debug("unreadable pickle structure: %s", exc)
        return None
    return None


def _pop_mark(stack: list[Any]) -> list[Any]:
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] is _MARK:
            items = stack[index + 1:]
            del stack[index:]
            return items
    raise ValueError("MARK not found")


def traced_input_metas(data: bytes, method: str = "forward") -> list[TensorMeta] | None:
    """The traced example inputs of `method` in a ``traced_inputs.pkl``, or None if they cannot be read."""
    value = read_pickle_structure(data)
    if not isinstance(value, dict):
        return None
    inputs = value.get(method)
    if isinstance(inputs, tuple | list) and inputs and all(isinstance(v, TensorMeta) for v in inputs):
        return list(inputs)
    return None
