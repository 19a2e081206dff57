"""The committed OpenAPI spec matches the app, the committed client is what openapi-python-client generates from
it and packages as a wheel; the Dockerfile and the compose file describe the deployment the README promises."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_committed_openapi_matches_the_app() -> None:
    proc = subprocess.run([sys.executable, "-m", "app.openapi", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + "\n(run `make openapi` and commit openapi.json and clients/python)"


def _differences(left: Path, right: Path) -> list[str]:
    compared = filecmp.dircmp(left, right, ignore=["__pycache__", ".ruff_cache", "build",
                                                                 "deepopt_client.egg-info"])
    found = [f"only in {compared.left}: {n}" for n in compared.left_only]
    found += [f"only in {compared.right}: {n}" for n in compared.right_only]
    found += [f"differs: {Path(compared.left) / n}" for n in compared.diff_files]
    for name in compared.common_dirs:
        found += _differences(Path(left) / name, Path(right) / name)
    return found


def test_committed_client_is_generated_from_the_spec(tmp_path: Path) -> None:
    from app.openapi import CLIENT_DIR, SPEC_PATH, generate_client

    generate_client(SPEC_PATH, tmp_path / "client")
    assert _differences(tmp_path / "client", CLIENT_DIR) == [], "run `make openapi` and commit clients/python"


def test_client_builds_as_a_package(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("deepopt_client-1.0.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "deepopt_client/py.typed" in names and "deepopt_client/api/jobs/submit_job.py" in names


def test_dockerfile_is_multi_stage_non_root_with_a_cuda_switch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert "ARG TORCH_CUDA=cpu" in text and "TORCH_CUDA=cu1" in text  # the CUDA build arg, with an example
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                if not source.startswith("--"):
                    assert (ROOT / source).exists(), f"{source} in {line!r} does not exist"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_describes_the_whole_deployment() -> None:
    import yaml

    proc = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "gpu", "config"],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert {"postgres", "redis", "minio", "migrate", "api", "worker-cpu", "worker-gpu"} <= set(services)
    for name, service in services.items():
        if name not in ("migrate", "minio-bucket"):
            assert "healthcheck" in service, f"{name} has no health check"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker-cpu", "worker-gpu"):
        assert services[name]["environment"]["DEEPOPT_STORAGE_URL"].startswith("s3://")
    assert {"pgdata", "miniodata"} <= set(config["volumes"])
