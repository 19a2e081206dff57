"""Datasets for calibration, evaluation and training: ``.npz`` arrays or ``.jsonl`` text. numpy only.

* ``.npz``: one array per model input, named like the input, plus an optional ``labels`` array; every array has
  the same first dimension (rows). Read with ``allow_pickle=False``; object arrays are refused.
* ``.jsonl``: one JSON object per line, ``{"text": "...", "label": 3}`` (``label`` optional, on all lines or none);
  for Hugging Face models with a tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepopt_core.errors import InvalidDataset
from deepopt_core.formats.archives import check_members, zip_members
from deepopt_core.specs import DatasetInfo, ModelInfo

log = logging.getLogger("deepopt.datasets")

LABELS = "labels"
# Inputs a dataset may leave out: they are filled in (attention_mask with ones, token_type_ids with zeros).
OPTIONAL_INPUTS = ("attention_mask", "token_type_ids")
MAX_JSONL_LINE = 1 << 20
_RANGE = re.compile(r"VR\[-?\d+, (\d+)\]")  # a torch.export range constraint with a finite upper bound
NO_TOKENIZER = ("the model archive has no tokenizer, so text (.jsonl) cannot be tokenized: upload the Hugging Face "
                "folder with its tokenizer files (tokenizer.json or the vocabulary and tokenizer_config.json), or "
                "give an .npz of token ids (input_ids, attention_mask)")


@dataclass
class Dataset:
    """A loaded dataset: `arrays` (npz) or `texts` (jsonl), with optional `labels` (int64 class indices).

    `targets` keeps float `labels` of an .npz as float32 (regression targets for training passes).
    """

    format: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None

    @property
    def num_rows(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        return len(next(iter(self.arrays.values()))) if self.arrays else 0


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise InvalidDataset("the dataset file is empty")
    if head[:2] == b"PK":
        return "npz"
    if head[:1] in (b"{", b" ", b"\n", b"\r", b"\t") or head[:3] == b"\xef\xbb\xbf":
        return "jsonl"
    raise InvalidDataset("a dataset must be an .npz archive of arrays or a .jsonl file of {\"text\", \"label\"} lines")


def _npz_headers(path: Path) -> dict[str, tuple[list[int], np.dtype]]:
    """Array name -> (shape, dtype), read from the .npy headers without loading the arrays."""
    headers: dict[str, tuple[list[int], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            check_members(zip_members(archive), path.stat().st_size)
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise InvalidDataset(f"member {info.filename!r} of the .npz is not an .npy array")
                with archive.open(info) as stream:
                    version = np.lib.format.read_magic(stream)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                    elif version in ((2, 0), (3, 0)):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
                    else:
                        raise ValueError(f"unsupported .npy format version {version}")
                headers[info.filename[: -len(".npy")]] = (list(shape), dtype)
    except zipfile.BadZipFile as exc:
        raise InvalidDataset(f"the .npz archive is corrupt: {exc}") from None
    except ValueError as exc:
        raise InvalidDataset(f"the .npz archive holds an unreadable array: {exc}") from None
    return headers


def _inspect_npz(path: Path) -> DatasetInfo:
    headers = _npz_headers(path)
    if not headers:
        raise InvalidDataset("the .npz archive holds no arrays")
    for name, (shape, dtype) in headers.items():
        if dtype.hasobject:
            raise InvalidDataset(f"array {name!r} holds Python objects; pickles are never loaded", field=name)
        if not shape:
            raise InvalidDataset(f"array {name!r} is a scalar; every array needs a first dimension of rows")
        if dtype.kind not in "biuf":
            raise InvalidDataset(f"array {name!r} has dtype {dtype}; only numbers and booleans are supported")
    rows = {shape[0] for shape, _ in headers.values()}
    if len(rows) != 1:
        sizes = {name: shape[0] for name, (shape, _) in headers.items()}
        raise InvalidDataset(f"all arrays need the same number of rows (first dimension); got {sizes}")
    if LABELS in headers and len(headers[LABELS][0]) != 1:
        raise InvalidDataset("`labels` must be one-dimensional (one class index per row)")
    return DatasetInfo(
        format="npz",
        num_rows=rows.pop(),
        arrays={name: shape for name, (shape, _) in headers.items()},
        dtypes={name: str(dtype) for name, (_, dtype) in headers.items()},
        has_labels=LABELS in headers,
    )


def _read_jsonl(path: Path) -> tuple[list[str], list[int | str] | None]:
    texts: list[str] = []
    labels: list[int | str] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_JSONL_LINE:
                raise InvalidDataset(f"line {number} is longer than {MAX_JSONL_LINE} bytes")
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8", errors="strict").strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise InvalidDataset(f"line {number} is not valid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InvalidDataset(f'line {number} must be an object with a string "text"')
            label = row.get("label")
            if label is not None and (isinstance(label, bool) or not isinstance(label, int | str)):
                raise InvalidDataset(f'line {number}: "label" must be an integer or a string')
            if (label is None) != (not labels) and texts:
                raise InvalidDataset(f'line {number}: "label" must be on every line or on none')
            texts.append(row["text"])
            if label is not None:
                labels.append(label)
    if not texts:
        raise InvalidDataset("the .jsonl file has no rows")
    return texts, (labels or None)


def inspect_dataset(path: str | Path) -> DatasetInfo:
    """Describe an uploaded dataset, recognised by content (.npz zip or .jsonl text), without loading arrays.

    Raises:
        InvalidDataset: unreadable, object arrays, mismatched rows, malformed lines.
        UnsafeContent: an .npz that is an archive bomb.
    """
    path = Path(path)
    try:
        if _sniff(path) == "npz":
            return _inspect_npz(path)
        texts, labels = _read_jsonl(path)
    except UnicodeDecodeError:
        raise InvalidDataset("the .jsonl file is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidDataset(f"the dataset cannot be read: {exc}") from None
    return DatasetInfo(
        format="jsonl",
        num_rows=len(texts),
        arrays={"text": [len(texts)], **({"label": [len(texts)]} if labels else {})},
        dtypes={"text": "str", **({"label": "int64" if isinstance(labels[0], int) else "str"} if labels else {})},
        has_labels=labels is not None,
    )


def check_dataset_for_model(dataset: DatasetInfo, model: ModelInfo) -> list[str]:
    """Problems that keep `dataset` from feeding `model`: missing input arrays, shapes against static dims and
    against the largest sizes a ``torch.export`` program takes.

    Returns:
        Human-readable problems; empty when the dataset fits.
    """
    problems: list[str] = []
    if dataset.format == "jsonl":
        if model.format != "hf":
            problems.append("text (.jsonl) datasets need a Hugging Face model; give an .npz with the input arrays")
        elif not model.details.get("has_tokenizer"):
            problems.append(NO_TOKENIZER)
        return problems
    largest = largest_sizes(model)
    for tensor in model.inputs:
        shape = dataset.arrays.get(tensor.name)
        if shape is None:
            if tensor.name not in OPTIONAL_INPUTS:
                problems.append(f"no array named {tensor.name!r} for the model input {tensor.name!r}; "
                                f"the dataset has {sorted(dataset.arrays)}")
            continue
        dtype = dataset.dtypes.get(tensor.name, "")
        if tensor.dtype.startswith(("int", "uint")) and dtype.startswith("float"):
            problems.append(f"array {tensor.name!r} is {dtype} but the model input is {tensor.dtype}")
        if tensor.shape is None:
            continue
        if len(shape) != len(tensor.shape):
            problems.append(f"array {tensor.name!r} has shape {shape}; the model input has {len(tensor.shape)} "
                            f"dimensions {tensor.shape} (rows first)")
            continue
        for axis, (want, got) in enumerate(zip(tensor.shape[1:], shape[1:], strict=True), start=1):
            if isinstance(want, int) and want > 0 and want != got:
                problems.append(f"array {tensor.name!r} has shape {shape}; the model input needs {want} at "
                                f"dimension {axis} ({tensor.shape})")
                break
            if isinstance(want, str) and want in largest and got > largest[want]:
                problems.append(f"array {tensor.name!r} has shape {shape}; the model input takes at most "
                                f"{largest[want]} at dimension {axis} (the range of {want!r} the program was exported "
                                "with)")
                break
    return problems


def largest_sizes(model: ModelInfo) -> dict[str, int]:
    """The upper bound of each symbolic dimension of a ``torch.export`` program, from its range constraints
    (``{"s41": "VR[1, 64]"}``); unbounded ones (``int_oo``) are left out. A program checks them when it runs."""
    largest: dict[str, int] = {}
    for symbol, bounds in (model.details.get("range_constraints") or {}).items():
        match = _RANGE.fullmatch(str(bounds))
        if match is not None:
            largest[str(symbol)] = int(match.group(1))
    return largest


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz (``allow_pickle=False``), after :func:`inspect_dataset`'s checks."""
    _inspect_npz(Path(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidDataset(f"the .npz archive cannot be read: {exc}") from None


def load_jsonl(path: str | Path) -> tuple[list[str], list[int | str] | None]:
    """Texts and labels (None when the lines have none) of a .jsonl dataset."""
    return _read_jsonl(Path(path))


def load_dataset(path: str | Path) -> Dataset:
    """Load a dataset of either format. Labels come out as an int64 array (string labels as class indices)."""
    path = Path(path)
    if _sniff(path) == "npz":
        arrays = load_npz(path)
        labels = arrays.pop(LABELS, None)
        targets = labels.astype(np.float32) if labels is not None and labels.dtype.kind == "f" else None
        return Dataset("npz", arrays=arrays, labels=None if labels is None else labels.astype(np.int64),
                       targets=targets)
    texts, raw_labels = load_jsonl(path)
    labels = None
    if raw_labels is not None:
        if all(isinstance(label, int) for label in raw_labels):
            labels = np.asarray(raw_labels, dtype=np.int64)
        else:
            classes = {name: i for i, name in enumerate(sorted({str(label) for label in raw_labels}))}
            labels = np.asarray([classes[str(label)] for label in raw_labels], dtype=np.int64)
    return Dataset("jsonl", texts=texts, labels=labels)
