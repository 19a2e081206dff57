"""Apply Alembic migrations from code (used by `make run`, the launcher and the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def _project_root() -> Path:
    """The folder with alembic.ini and migrations/: the source tree, or the working directory of an
    installed copy (the Docker image runs from /srv/deepopt)."""
    source = Path(__file__).resolve().parents[2]
    return source if (source / "alembic.ini").is_file() else Path.cwd()


ROOT = _project_root()


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


if __name__ == "__main__":
    upgrade()
