"""The parts of the manual that come from the code: the settings table and the pass reference.

    python docs/generate.py          # rewrite them (what `make docs` runs)
    python docs/generate.py --check  # exit 1 naming each stale page (tests/test_docs.py runs this)

The settings table is read from `app.core.config.Settings`, the pass reference from the registry
(`deepopt_core.registry`) and the pydantic fields of every registered pass config, so a field's description is
written once, in the code, and reaches the OpenAPI schema, the client and these pages alike.

A generated part sits in its page between `<!-- generated: NAME ... -->` and `<!-- end generated: NAME -->`;
everything outside the two lines is written by hand. This script lives outside the packages because it imports
both `app` (which must never import torch) and `deepopt_core` (which must never import `app`); it imports only
their pydantic models, so it runs in a second with no torch.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "make docs"
SCRIPT = "python docs/generate.py"

_BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<name>[\w-]+)\b[^\n]*-->\n)(?P<body>.*?)(?P<close><!-- end generated: (?P=name) -->)",
    re.DOTALL,
)


def marker(name: str) -> str:
    """The line that opens a generated part (pages are written with it; the check accepts any text after NAME)."""
    return (f"<!-- generated: {name}. Regenerate with `{COMMAND}` ({SCRIPT}); do not edit by hand: "
            "tests/test_docs.py fails when this part is stale. -->")


# --- Markdown helpers ---------------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens (links are checked by it)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _docstring(cls: type) -> str:
    # The class's own docstring only: inspect.getdoc would hand a config without one pydantic's BaseModel text.
    own = cls.__dict__.get("__doc__")
    return inspect.cleandoc(own) if isinstance(own, str) else ""


def _source(obj: Any) -> str:
    """The file defining `obj`, relative to the repository (pages link it from docs/)."""
    return Path(inspect.getfile(obj)).resolve().relative_to(ROOT).as_posix()


# --- Fields -------------------------------------------------------------------------------------------------------

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def _is_model(annotation: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_text(annotation: Any, nested: dict[str, type] | None = None) -> str:
    """A field's type as a reader of JSON (or of an environment variable) meets it; models link to their section,
    and are collected into `nested` so that the page can describe each once."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return type_text(args[0], nested)
    if origin is typing.Literal:
        return " or ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(arg, nested) for arg in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {type_text(args[0], nested)}" if args else "list"
    if origin is dict or annotation is dict:
        return "object"
    if _is_model(annotation):
        if nested is not None:
            nested.setdefault(annotation.__name__, annotation)
        return f"[{annotation.__name__}](#{slug(annotation.__name__)})"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _constraints(field: Any) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "at least", "max_length": "at most"}
    found = []
    for item in field.metadata:
        for attribute, sign in signs.items():
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(f"{sign} {value}" + (" items" if "length" in attribute else ""))
    return ", ".join(found)


def _human(name: str, value: Any) -> str:
    """A unit beside a large default: bytes in KiB/MiB/GiB, seconds in hours."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if name.endswith("_bytes") and value >= 1024:
        for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
            if value % 1024**power == 0:
                return f" ({value // 1024**power:g} {unit})"
    if name.endswith("_s") and value >= 3600 and value % 3600 == 0:
        return f" ({value / 3600:g} h)"
    return ""


def default_text(name: str, field: Any, *, unset: str = "`null`") -> str:
    """A field's default as JSON (`unset` for None), "required" when there is none."""
    from pydantic_core import PydanticUndefined, to_jsonable_python

    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return unset
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{json.dumps(to_jsonable_python(value), separators=(', ', ': '))}`" + _human(name, value)


def _description(field: Any) -> str:
    text = field.description or ""
    aliases = getattr(field.validation_alias, "choices", None)
    if aliases:
        text += " Also accepted as " + ", ".join(f"`{a}`" for a in aliases if isinstance(a, str)) + "."
    return text


def _field_rows(model: type, nested: dict[str, type], first: Iterable[str] = (), last: Iterable[str] = ()) -> \
        list[list[str]]:
    fields: dict[str, Any] = dict(model.model_fields)  # type: ignore[attr-defined]
    head = [name for name in first if name in fields]
    tail = [name for name in last if name in fields and name not in head]
    order = head + [name for name in fields if name not in head and name not in tail] + tail
    rows = []
    for name in order:
        field = fields[name]
        kind = type_text(field.annotation, nested)
        if limits := _constraints(field):
            kind += f", {limits}"
        rows.append([f"`{name}`", kind, default_text(name, field), _description(field)])
    return rows


def undocumented_fields() -> list[str]:
    """Fields of Settings and of every pass config (and the models they nest) that have no description."""
    from app.core.config import Settings

    missing = [f"Settings.{name}" for name, f in Settings.model_fields.items() if not f.description]
    nested: dict[str, type] = {}
    models: list[type] = [config for entry in _entries() for config in entry.configs]
    seen: set[type] = set()
    while models:
        model = models.pop(0)
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            type_text(field.annotation, nested)
        models += [m for m in nested.values() if m not in seen]
    return missing


# --- The settings table -------------------------------------------------------------------------------------------


def render_settings() -> str:
    from app.core.config import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = []
    for name, field in Settings.model_fields.items():
        kind = type_text(field.annotation)
        if limits := _constraints(field):
            kind += f", {limits}"
        rows.append([f"`{prefix}{name.upper()}`", kind, default_text(name, field, unset="unset"),
                     field.description or ""])
    lines = [
        f"_Generated from `Settings` in [{_source(Settings)}](../{_source(Settings)}) by `{COMMAND}`: edit the field "
        "descriptions there, not this table._",
        "",
        *_table(["variable", "type", "default", "what it does"], rows),
    ]
    return "\n".join(lines) + "\n"


# --- The pass reference -------------------------------------------------------------------------------------------


def _entries() -> list[Any]:
    import deepopt_core.passes  # noqa: F401  (registers every pass)
    from deepopt_core.registry import all_passes

    return all_passes()


_RUNS_ON = {"onnx": "ONNX", "torch": "PyTorch"}


def _variant_heading(entry: Any, config: type) -> str:
    variant = entry.variant_of(config)
    return f"`{entry.type}`" if variant is None else f"`{entry.type}` `{entry.variant_field}: {variant}`"


def render_pass_reference() -> str:
    entries = _entries()
    summary = []
    for entry in entries:
        if entry.variant_field is None:
            variants = "-"
        else:
            links = [f"[`{entry.variant_of(c)}`](#{slug(_variant_heading(entry, c))})" for c in entry.configs]
            variants = f"`{entry.variant_field}`: " + ", ".join(links) + " (the first is the default)"
        summary.append([f"[`{entry.type}`](#{slug(entry.type)})", variants,
                        ", ".join(_RUNS_ON.get(r, r) for r in entry.representations)])
    lines = [
        "_Generated from the pass registry ([deepopt_core/passes/\\_\\_init\\_\\_.py]"
        f"(../deepopt_core/passes/__init__.py)) and each config's pydantic fields by `{COMMAND}`: edit the config "
        "classes' docstrings and field descriptions, not this page._",
        "",
        "A job's `passes` is a list of these objects, each with its `type` (and, for a pass with variants, the "
        "variant field; omitted, it takes the first variant). Unknown fields are a 422. \"Runs on\" is the model "
        "representation the pass's implementation takes; the planner converts between them "
        "([passes.md](passes.md)).",
        "",
        *_table(["pass", "variants", "runs on"], summary),
        "",
    ]
    nested: dict[str, type] = {}
    for entry in entries:
        impl = entry.impl.replace(".", "/") + ".py"
        lines += [f"## {entry.type}", "",
                  f"Runs on: {', '.join(_RUNS_ON.get(r, r) for r in entry.representations)}. "
                  f"Implementation: [{impl}](../{impl}).", ""]
        for config in entry.configs:
            source = _source(config)
            lines += [f"### {_variant_heading(entry, config)}", "",
                      f"`{config.__name__}` in [{source}](../{source}).", ""]
            if doc := _docstring(config):
                lines += [doc, ""]
            first = ["type"] + ([entry.variant_field] if entry.variant_field else [])
            lines += [*_table(["field", "type", "default", "description"],
                              _field_rows(config, nested, first=first, last=["version"])), ""]
    lines += ["## Nested settings", "", "Objects that pass fields take as values.", ""]
    done: set[str] = set()
    while pending := [name for name in nested if name not in done]:
        for name in sorted(pending):
            done.add(name)
            model = nested[name]
            lines += [f"### {name}", "", f"In [{_source(model)}](../{_source(model)}).", ""]
            if doc := _docstring(model):
                lines += [doc, ""]
            lines += [*_table(["field", "type", "default", "description"], _field_rows(model, nested)), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --- Pages --------------------------------------------------------------------------------------------------------

PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "docs/settings.md": {"settings": render_settings},
    "docs/pass-reference.md": {"pass-reference": render_pass_reference},
}


def render_page(text: str, parts: dict[str, Callable[[], str]], page: str = "page") -> str:
    """`text` with each generated part replaced by what the code says now."""
    found = {match["name"] for match in _BLOCK.finditer(text)}
    if missing := sorted(set(parts) - found):
        raise ValueError(f"{page} has no generated part {missing}: add the lines `{marker(missing[0])}` and "
                         f"`<!-- end generated: {missing[0]} -->`")

    def replace(match: re.Match[str]) -> str:
        render = parts.get(match["name"])
        if render is None:
            return match[0]
        return f"{marker(match['name'])}\n\n{render()}\n{match['close']}"

    return _BLOCK.sub(replace, text)


def stale_pages(root: Path = ROOT) -> list[str]:
    """Pages whose generated parts differ from what the code says now."""
    stale = []
    for page, parts in PAGES.items():
        path = root / page
        text = path.read_text() if path.exists() else ""
        if not path.exists() or render_page(text, parts, page) != text:
            stale.append(page)
    return stale


def write(root: Path = ROOT) -> list[str]:
    """Rewrite every generated part; returns the pages that changed."""
    changed = []
    for page, parts in PAGES.items():
        path = root / page
        text = path.read_text()
        new = render_page(text, parts, page)
        if new != text:
            path.write_text(new)
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=SCRIPT, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated part is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run as a script, docs/ is on the path instead of the repository
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{page} is stale: run `{COMMAND}` and commit it", file=sys.stderr)
        return 1 if stale else 0
    for page in write():
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
