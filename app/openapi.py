"""The committed OpenAPI spec (`openapi.json`) and the Python client generated from it (`clients/python`).

    python -m app.openapi            # write openapi.json from the app
    python -m app.openapi --check    # exit 1 when openapi.json differs from the app (CI runs this as a test)
    python -m app.openapi --client   # also regenerate clients/python with openapi-python-client
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "openapi.json"
CLIENT_DIR = ROOT / "clients" / "python"
CLIENT_CONFIG = ROOT / "clients" / "openapi-python-client.yaml"


def current_spec() -> dict[str, Any]:
    from app.main import create_app

    return create_app().openapi()


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def generate_client(spec_path: Path, output: Path) -> None:
    """Run openapi-python-client on `spec_path` into `output` (replaced)."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "client"
        subprocess.run(
            [str(bin_dir / "openapi-python-client"), "generate", "--path", str(spec_path), "--meta", "setup",
             "--config", str(CLIENT_CONFIG), "--output-path", str(target), "--overwrite"],
            check=True, env=env, cwd=scratch, stdout=subprocess.DEVNULL,
        )
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(target, output, ignore=shutil.ignore_patterns(".ruff_cache", "__pycache__"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.openapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--client", action="store_true", help="also regenerate clients/python")
    args = parser.parse_args(argv)
    text = render(current_spec())
    if args.check:
        if not SPEC_PATH.exists() or SPEC_PATH.read_text() != text:
            print("openapi.json does not match the app: run `make openapi` and commit the result", file=sys.stderr)
            return 1
        return 0
    SPEC_PATH.write_text(text)
    print(f"wrote {SPEC_PATH.relative_to(ROOT)}")
    if args.client:
        generate_client(SPEC_PATH, CLIENT_DIR)
        print(f"wrote {CLIENT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
