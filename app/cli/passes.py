"""`--pass TYPE[:key=value,...]` -> a pass spec: `prune:method=magnitude,sparsity=0.5` ->
`{"type": "prune", "method": "magnitude", "sparsity": 0.5}`. A value is JSON when it parses as JSON (numbers,
true/false/null, `[1,2]`, `{"a":1}`), else a string; commas inside brackets or quotes do not split."""

from __future__ import annotations

import json
from typing import Any


class PassSyntaxError(ValueError):
    pass


def _split(text: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if quote or depth:
        raise PassSyntaxError(f"unbalanced brackets or quotes in {text!r}")
    items.append("".join(current))
    return [item for item in items if item.strip()]


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pass(text: str) -> dict[str, Any]:
    kind, _, rest = text.partition(":")
    kind = kind.strip()
    if not kind:
        raise PassSyntaxError(f"--pass {text!r}: expected TYPE[:key=value,...]")
    spec: dict[str, Any] = {"type": kind}
    for item in _split(rest):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PassSyntaxError(f"--pass {text!r}: {item!r} is not key=value")
        spec[key.strip()] = parse_value(value.strip())
    return spec
