"""The manual stays true to the code: its generated parts are current, every field they draw on is described, and
every relative link in README.md and docs/*.md points at a file (and heading) that exists."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current_and_need_no_torch() -> None:
    # As `make docs` runs it: a script, in a fresh interpreter, which must not import torch on the way.
    code = ("import runpy, sys\nsys.argv = ['docs/generate.py', '--check']\ntry:\n"
            "    runpy.run_path('docs/generate.py', run_name='__main__')\nexcept SystemExit as end:\n"
            "    code = end.code\nassert 'torch' not in sys.modules, 'docs/generate.py imported torch'\n"
            "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + "\n(run `make docs` and commit the pages)"


def test_every_setting_and_pass_field_has_a_description() -> None:
    missing = _generator().undocumented_fields()
    assert missing == [], f"add Field(description=...) to {missing}: the generated pages are made of them"


def test_a_generated_part_is_replaced_and_the_text_around_it_kept() -> None:
    gen = _generator()
    page = "# Title\n\nby hand\n\n<!-- generated: part -->\nold\n<!-- end generated: part -->\n\nafter\n"
    new = gen.render_page(page, {"part": lambda: "new\n"})
    assert new.startswith("# Title\n\nby hand\n\n" + gen.marker("part") + "\n\nnew\n")
    assert new.endswith("<!-- end generated: part -->\n\nafter\n")
    assert gen.render_page(new, {"part": lambda: "new\n"}) == new
    with pytest.raises(ValueError, match="no generated part"):
        gen.render_page("# no markers\n", {"part": lambda: ""})


_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """The text with fenced code blocks and code spans blanked: links inside them are examples, not links."""
    return _CODE_SPAN.sub("``", _FENCE.sub("", text))


def _anchors(path: Path, slug) -> set[str]:  # type: ignore[no-untyped-def]
    text = _FENCE.sub("", path.read_text())
    found: set[str] = set(_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")  # GitHub numbers repeated headings
    return found


def _links(path: Path) -> list[str]:
    prose = _prose(path.read_text())
    return _LINK.findall(prose) + _REFERENCE.findall(prose)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    slug = _generator().slug
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:: not ours to check
            continue
        location, _, fragment = target.partition("#")
        resolved = (page.parent / location).resolve() if location else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved}")
        elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved, slug):
            broken.append(f"{target}: no heading #{fragment} in {resolved.relative_to(ROOT)}")
    assert broken == [], f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_links_and_skips_code() -> None:
    text = "see [a](a.md#x) and `[b](b.md)`\n\n```\n[c](c.md)\n```\n[d]: d.md\n"
    prose = _prose(text)
    assert _LINK.findall(prose) + _REFERENCE.findall(prose) == ["a.md#x", "d.md"]


def test_no_page_copies_a_row_of_a_benchmark_results_table() -> None:
    # Results are rewritten by their benchmarks; a copy in the manual would go stale silently. Link the file.
    results = ROOT / "benchmarks" / "results"
    rows = {line.strip() for path in results.glob("*.md") for line in path.read_text().splitlines()
            if line.startswith("|") and re.search(r"\d", line) and not set(line) <= set("|-: ")}
    written_by_hand = [page for page in PAGES if page.name != "support-matrix.md"]  # benchmarks/matrix_report.py's
    copied = [f"{page.relative_to(ROOT)}: {line.strip()[:80]}" for page in written_by_hand
              for line in page.read_text().splitlines() if line.strip() in rows]
    assert copied == [], "link benchmarks/results/*.md instead of copying its rows:\n" + "\n".join(copied)
