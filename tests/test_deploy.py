"""Deployment files: migrations are reversible on both databases, the compose file is valid, and the
boundaries between packages hold (the API never imports torch; the core never imports the service)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.conftest import POSTGRES_ADMIN_URL, ROOT

TABLES = {"model", "dataset", "job", "artifact", "benchmark", "idempotency_key"}


def _roundtrip(url: str) -> None:
    from app.core.migrate import downgrade, upgrade

    upgrade(url)
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    downgrade(url)
    assert not TABLES & set(inspect(engine).get_table_names())
    upgrade(url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    engine.dispose()


def test_migrations_roundtrip_on_sqlite(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.mark.postgres
def test_migrations_roundtrip_on_postgres() -> None:
    schema = f"deepopt_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        _roundtrip(f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_api_process_does_not_import_torch() -> None:
    code = (
        "import sys; from app.main import app; app.openapi(); "
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_the_service() -> None:
    forbidden = {"app", "worker", "fastapi", "celery", "sqlalchemy", "starlette"}
    for path in (ROOT / "deepopt_core").rglob("*.py"):
        assert not _imports(path) & forbidden, f"{path} imports {_imports(path) & forbidden}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_file_is_valid() -> None:
    subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True)
