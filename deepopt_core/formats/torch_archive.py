"""Review of the zip archives torch reads (TorchScript, .pt2) before anything loads them. Standard library only.

Both formats are read by torch's ``PyTorchFileReader`` (miniz), which takes the archive folder from the raw name
of the first record (up to its first ``/``), requires every record under it, and looks records up ignoring ASCII
case. Python's zipfile reads the same bytes differently (normalised names, last duplicate wins), so this module
accepts only archives on which both readers must agree: canonical names (:func:`canonical_top`), then rules on
what the members may be (:func:`review_torch_export`, :func:`review_torchscript`). The same rules run twice: in
:mod:`deepopt_core.formats.detect` on zipfile's view, and in the torch-side loaders on the records that torch's own
reader lists and returns (:func:`deepopt_core.formats.torch_common.check_torch_archive`).

What is refused, and why:

- .pt2: any pickle ``torch.export.load`` would unpickle with ``weights_only=False`` (legacy ``data/weights/*.pt``
  and ``data/constants/*.pt``, ``use_pickle`` payloads, ``custom_obj*``/``opaque_obj*`` constants, any ``.pt`` or
  ``.pkl`` other than the sample inputs, which the loader checks with a restricted load); AOTInductor packages
  (``data/aotinductor/``), whose shared library would be dlopened.
- TorchScript: pickles that name globals outside what ``torch.jit.save`` writes, and code that reads or writes
  files (``torch.from_file``, ``torch.save``), uses custom classes other than the quantized packed parameters, or
  calls ops outside the ``aten``, ``prim`` and ``quantized`` namespaces (an op library loaded beside the model).
"""

from __future__ import annotations

import json
import pickletools
import re
from collections.abc import Callable
from typing import Literal

from deepopt_core.errors import InvalidModel, UnsafeContent
from deepopt_core.formats.archives import check_no_native_code

ReadMember = Callable[[str], bytes]
"""Returns the bytes of a member, by its full name (``<top>/<rest>``)."""

TorchFormat = Literal["torchscript", "torch_export"]

MAX_REVIEWED_BYTES = 256 * 1024 * 1024
"""Largest pickle, code or config member that is reviewed; larger ones are refused (real ones are far smaller)."""

TORCH_MARKERS = frozenset({"archive_format", "constants.pkl"})
"""Members whose presence (in any folder) makes an archive one that torch's reader would be asked to read."""

# The globals TorchScript's own pickler writes (data.pkl, constants.pkl, traced_inputs.pkl, *.debug_pkl).
_TORCH_GLOBALS = frozenset({
    "device", "per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams", "per_tensor_symmetric",
    "per_channel_symmetric",
})  # fmt: skip
_CODE_NAMESPACES = frozenset({"aten", "prim", "quantized"})
_FILE_OPS = re.compile(r"\bfrom_file\b|\b(?:torch|aten)\s*\.\s*save\b")
_OPS = re.compile(r"\bops\s*\.\s*(\w+)")
_CLASSES = re.compile(r"\bclasses\s*\.\s*(\w+)\s*\.\s*(\w+)")


def _ambiguous(detail: str) -> UnsafeContent:
    return UnsafeContent(f"ambiguous member names: {detail}; re-save the model with torch.jit.save or "
                         "torch.export.save")


def canonical_top(names: list[str]) -> str:
    """The one top folder of a torch archive whose raw member names are all canonical.

    Canonical: ``<top>/<rest>`` with one and the same `top` for every member, `top` not ``""``, ``.`` or ``..``,
    no ``.``, ``..`` or empty component (so no leading ``/`` and no folder entries), no backslash or NUL, and no
    two names equal when ASCII case is ignored (miniz's lookup ignores it).

    Args:
        names: the raw member names, as stored in the archive.

    Raises:
        UnsafeContent: "ambiguous member names".
    """
    if not names:
        raise _ambiguous("the archive is empty")
    top = names[0].split("/")[0]
    if top in ("", ".", ".."):
        raise _ambiguous(f"the first member {names[0]!r} is not inside a named folder")
    seen: set[str] = set()
    for name in names:
        parts = name.split("/")
        if "\\" in name or "\x00" in name:
            raise _ambiguous(f"{name!r} has a backslash or NUL")
        if len(parts) < 2 or parts[0] != top:
            raise _ambiguous(f"{name!r} is not inside the archive folder {top!r}")
        if any(part in ("", ".", "..") for part in parts):
            raise _ambiguous(f"{name!r} has an empty, '.' or '..' component")
        folded = name.lower()
        if folded in seen:
            raise _ambiguous(f"{name!r} occurs more than once (ignoring case)")
        seen.add(folded)
    return top


def is_torch_archive(names: list[str]) -> bool:
    """Whether an archive has a member that only TorchScript or .pt2 archives have (see :data:`TORCH_MARKERS`)."""
    return any(name.rstrip("/").rsplit("/", 1)[-1].lower() in TORCH_MARKERS for name in names)


def review_torch_archive(fmt: TorchFormat, names: list[str], read: ReadMember) -> None:
    """Check canonical names, then the rules of `fmt`, on one reader's view of an archive.

    Args:
        fmt: ``"torchscript"`` or ``"torch_export"``.
        names: raw member names (files only; torch archives have no folder entries).
        read: reads a member by its full name.

    Raises:
        UnsafeContent: see the module docstring.
        InvalidModel: a config or pickle that cannot be read.
    """
    top = canonical_top(names)
    check_no_native_code(names)
    # Rules match lower-cased names: torch finds "data/weights/w.pt" under "DATA/Weights/W.PT" too.
    members = {name[len(top) + 1:].lower(): name for name in names}
    if fmt == "torch_export":
        review_torch_export(members, read)
    else:
        review_torchscript(members, read)


def _read_bounded(read: ReadMember, name: str) -> bytes:
    data = read(name)
    if len(data) > MAX_REVIEWED_BYTES:
        raise UnsafeContent(f"archive member {name!r} is larger than {MAX_REVIEWED_BYTES} bytes")
    return data


def review_torch_export(members: dict[str, str], read: ReadMember) -> None:
    """Refuse a .pt2 whose loading would unpickle anything beyond the sample inputs, or load native code.

    Args:
        members: lower-cased name inside the archive folder -> full member name.
        read: reads a member by its full name.
    """
    for rel, name in members.items():
        base = rel.rsplit("/", 1)[-1]
        if rel.startswith("data/aotinductor/"):
            raise UnsafeContent(f"the .pt2 archive holds an AOTInductor package ({name}); compiled models are "
                                "never loaded")
        if base.startswith(("custom_obj", "opaque_obj")):
            raise UnsafeContent(f"the .pt2 archive holds pickled custom objects ({name})")
        if rel.endswith((".pt", ".pkl", ".pickle", ".pth")) and not (
            rel.startswith("data/sample_inputs/") and rel.count("/") == 2 and rel.endswith(".pt")
        ):
            raise UnsafeContent(f"the .pt2 archive stores pickled payloads ({name}); re-save it with "
                                "torch.export.save")
        if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith("_config.json"):
            _review_payload_config(name, _read_bounded(read, name))


def _review_payload_config(name: str, data: bytes) -> None:
    try:
        config = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InvalidModel(f"the .pt2 archive has an unreadable {name}") from None
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InvalidModel(f"the .pt2 archive has an unreadable {name}")
    for entry in entries.values():
        if not isinstance(entry, dict):
            raise InvalidModel(f"the .pt2 archive has an unreadable {name}")
        path_name = str(entry.get("path_name", "")).lower()
        if entry.get("use_pickle") or path_name.startswith(("custom_obj", "opaque_obj")):
            raise UnsafeContent("the .pt2 archive stores pickled weights or constants; pickles are never loaded")


def review_torchscript(members: dict[str, str], read: ReadMember) -> None:
    """Refuse a TorchScript archive whose pickles or code reach beyond what ``torch.jit.save`` writes.

    Args:
        members: lower-cased name inside the archive folder -> full member name.
        read: reads a member by its full name.
    """
    for rel, name in members.items():
        if rel.endswith((".pkl", ".debug_pkl")):
            check_pickle_globals(name, _read_bounded(read, name))
        elif rel.endswith(".py"):
            try:
                code = _read_bounded(read, name).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidModel(f"the TorchScript code {name} is not UTF-8") from None
            check_torchscript_code(name, code)


def _allowed_global(module: str, attr: str) -> bool:
    if module == "__torch__.torch.classes.quantized":
        return attr.endswith("PackedParamsBase")
    if module == "__torch__.torch.classes.rnn":
        return attr == "CellParamsBase"
    if module.startswith("__torch__.torch.classes"):
        return False
    if module == "__torch__" or module.startswith("__torch__."):
        return True  # a class of the archive's own code, which check_torchscript_code reviews
    if module == "torch":
        return attr.endswith("Storage") or attr in _TORCH_GLOBALS
    return ((module == "torch._utils" and attr.startswith("_rebuild_")) or module == "torch.jit._pickle"
            or (module, attr) in (("collections", "OrderedDict"), ("builtins", "complex")))


def check_pickle_globals(name: str, data: bytes) -> None:
    """Refuse a TorchScript pickle that names a global outside what TorchScript's pickler writes.

    The opcodes are only scanned (``pickletools.genops``), never run.

    Raises:
        UnsafeContent: a global outside the allowlist, or an opcode TorchScript never writes (STACK_GLOBAL, INST,
            OBJ: they could name globals this scan does not see).
        InvalidModel: not a pickle.
    """
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("STACK_GLOBAL", "INST", "OBJ"):
                raise UnsafeContent(f"the TorchScript pickle {name} uses {op.name}, which TorchScript never writes")
            if op.name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                if not _allowed_global(module, attr):
                    raise UnsafeContent(f"the TorchScript pickle {name} references {module}.{attr}, which "
                                        "TorchScript archives never hold")
    except (ValueError, IndexError) as exc:
        raise InvalidModel(f"the TorchScript pickle {name} is unreadable: {exc}") from None


def check_torchscript_code(name: str, code: str) -> None:
    """Refuse TorchScript code that touches files, custom classes or op libraries beyond aten/prim/quantized.

    The patterns are searched in the whole text (comments and strings included): a false refusal of a real
    model is better than a miss, and ``torch.jit.save`` output contains none of them.
    """
    code = code.replace("\\\n", " ")  # a line continuation must not split a pattern
    if match := _FILE_OPS.search(code):
        raise UnsafeContent(f"the TorchScript code {name} calls {match.group(0)!r}, which reads or writes files")
    for match in _OPS.finditer(code):
        if match.group(1) not in _CODE_NAMESPACES:
            raise UnsafeContent(f"the TorchScript code {name} calls ops.{match.group(1)}, outside the aten, prim "
                                "and quantized operators")
    for match in _CLASSES.finditer(code):
        namespace, cls = match.groups()
        if not _allowed_global(f"__torch__.torch.classes.{namespace}", cls):
            raise UnsafeContent(f"the TorchScript code {name} uses the custom class torch.classes.{namespace}.{cls}")
