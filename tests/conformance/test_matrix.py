"""The conformance matrix (benchmarks/matrix.py): its fast slice as real jobs, and the generated documents kept
current.

The slice is one model per family in its most common upload format x one variant of every pass type, each run
as a user's job runs (upload, submit, the sandboxed child, read back). Every cell must succeed with verified
outputs or be refused at submit with a 422 naming a field; a cell accepted and then failed is a defect. The
defects known today are `xfail(strict=True)`: the day one is fixed its test fails, and its marker must go.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import matrix, matrix_report
from benchmarks import matrix_models as mm

# Cells accepted at submit that fail today, with the defect (issue 15's list; fixed by the owners of those passes).
# Found by this matrix (none of the slice's cells is on the issue's own list of known defects).
KNOWN_DEFECTS: dict[str, str] = {
}


def _param(cell: matrix.Cell) -> Any:
    reason = KNOWN_DEFECTS.get(cell.id)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(cell, id=cell.id, marks=marks)


@pytest.fixture(scope="module")
def matrix_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[Any, matrix.Upload]]]:
    """One in-process service for the slice; each model uploaded once (the cache of built files is shared)."""
    with matrix.service(tmp_path_factory.mktemp("matrix") / "data") as client:
        yield client, {}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("cell", [_param(cell) for cell in matrix.fast_cells()])
def test_fast_slice_cell(cell: matrix.Cell, matrix_service: tuple[Any, dict[Any, matrix.Upload]]) -> None:
    client, uploads = matrix_service
    key = (cell.arch, cell.upload)
    if key not in uploads:
        uploads[key] = matrix.upload(client, mm.BY_NAME[cell.arch], cell.upload, mm.DEFAULT_CACHE)  # type: ignore[arg-type]
    record = matrix.run_cell(client, cell, uploads[key])
    assert record["outcome"] in ("succeeded", "refused"), json.dumps(record, indent=1)[:3000]
    if record["outcome"] == "refused":
        # A refusal names the field and says why.
        assert record["problems"] and all(p["field"] and p["message"] for p in record["problems"]), record


def _committed_results() -> dict[str, Any]:
    path: Path = matrix.RESULTS_JSON
    assert path.exists(), "benchmarks/results/matrix.json is missing: run `make matrix` (or ARGS=\"--slice fast\")"
    return dict(json.loads(path.read_text()))


def test_documents_are_generated_from_the_results() -> None:
    results = _committed_results()
    assert matrix_report.DOC.read_text() == matrix_report.render_support(results), (
        "docs/support-matrix.md is stale: run `python -m benchmarks.matrix --render`")
    assert matrix_report.RESULTS_MD.read_text() == matrix_report.render_results(results), (
        "benchmarks/results/matrix.md is stale: run `python -m benchmarks.matrix --render`")


def test_results_list_the_current_matrix() -> None:
    results = _committed_results()
    assert [c["id"] for c in results["cells"]] == [c.id for c in matrix.all_cells()], (
        "the matrix definition changed since the results were written: rerun `make matrix` for the new cells")
    assert results["definition"] == json.loads(json.dumps(matrix.definition()))
    assert all(c["outcome"] in (*matrix_report.OUTCOMES,) for c in results["cells"])
    ran = [c for c in results["cells"] if c["outcome"] != "not_run"]
    runs = {r["id"] for r in results["runs"]}
    assert all(c.get("run") in runs for c in ran), "every cell run names the run (commit, time) it came from"


def test_shards_split_the_matrix_and_merge_back() -> None:
    cells = [cell.id for cell in matrix.all_cells()]
    shards = [{c for c in cells if matrix.in_shard(c, (k, 3))} for k in (1, 2, 3)]
    assert set().union(*shards) == set(cells) and sum(map(len, shards)) == len(cells)
    assert all(len(s) > len(cells) / 4 for s in shards)

    def results(run: str, started: str, outcomes: dict[str, str]) -> dict[str, Any]:
        return {"definition": matrix.definition(), "runs": [{"id": run, "started_at": started}],
                "cells": [{"id": c, "outcome": outcomes.get(c, "not_run"), **({"run": run} if c in outcomes else {})}
                          for c in cells]}

    first, second = cells[0], cells[1]
    committed = results("r1", "2026-01-01T00:00:00", {first: "failed", second: "succeeded"})
    shard = results("r2", "2026-02-01T00:00:00", {first: "succeeded"})
    merged = matrix.merge_files(committed, [shard])
    by_id = {c["id"]: c for c in merged["cells"]}
    assert by_id[first] == {"id": first, "outcome": "succeeded", "run": "r2"}
    assert by_id[second]["run"] == "r1" and by_id[cells[2]]["outcome"] == "not_run"
    assert [r["id"] for r in merged["runs"]] == ["r1", "r2"]
    # An older shard never overwrites a newer record, and a shard of another definition is refused.
    stale = results("r0", "2025-12-01T00:00:00", {second: "failed"})
    assert {c["id"]: c for c in matrix.merge_files(merged, [stale])["cells"]}[second]["run"] == "r1"
    with pytest.raises(ValueError):
        matrix.merge_files(merged, [{**shard, "definition": {}}])
