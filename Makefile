# DeepOpt. `make run` and `make test` are all a new user needs; both install into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepopt-installed
TORCH_VERSION := 2.13.0
# ONNX -> torch for the prune methods that need gradients (deepopt_core/formats/onnx_torch.py). Installed without
# its dependencies: it requires torchvision (for two detection ops only), and PyPI's torchvision wheels are CUDA
# builds that do not import next to the CPU torch; the module stands in for torchvision while importing it.
ONNX2TORCH_VERSION := 1.5.15

.PHONY: install run api worker test lint typecheck migrate openapi docs bench bench-quant bench-train bench-auto bench-prune bench-load matrix clean

install: $(STAMP)

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
# clients/python is the client generated from openapi.json (`make openapi`); the `deepopt` CLI uses it.
$(STAMP): pyproject.toml clients/python/setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' -e clients/python torch==$(TORCH_VERSION)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps onnx2torch==$(ONNX2TORCH_VERSION)
	@touch $@

migrate: install
	$(PY) -m app.core.migrate

run: install
	$(PY) -m app.launcher

api: install
	$(PY) -m app.launcher api

worker: install
	$(PY) -m app.launcher worker

lint: install
	$(PY) -m ruff check app worker deepopt_core tests benchmarks examples docs

typecheck: install
	$(PY) -m mypy

# Two test processes (a file stays on one; each has its own Redis database and PostgreSQL schemas), then the
# `serial` tests alone: they restart PostgreSQL and Redis under everything else.
test: install lint typecheck
	$(PY) -m pytest -q -ra -n 2 --dist loadfile -m "not serial"
	$(PY) -m pytest -q -ra -m serial

# The committed OpenAPI spec and the generated client: run after changing the API or a pass's config.
openapi: install
	$(PY) -m app.openapi --client

# The generated parts of docs/ (the settings table from Settings, the pass reference from the pass configs): run
# after changing either; tests/test_docs.py fails when a generated part is stale.
docs: install
	$(PY) docs/generate.py

# The quantization benchmark (MiniLM + digits CNN, about 5 minutes on 2 idle cores): writes
# benchmarks/results/quantization.{md,json}. Add ARGS=--quick for a shorter run.
bench-quant: install
	nice -n 10 $(PY) -m benchmarks.quantization $(ARGS)

# The training benchmark (distill and finetune on digits, breast cancer and MiniLM; about an hour on 2 busy
# cores): writes benchmarks/results/training.{md,json}. ARGS="--only digits cancer" runs a part.
bench-train: install
	nice -n 10 $(PY) -m benchmarks.training $(ARGS)

# The auto benchmark (auto against a grid of hand recipes, 1% bound, on the digits CNN and MiniLM; about ten
# minutes on 2 busy cores): writes benchmarks/results/auto.{md,json}. ARGS=--skip-minilm runs the digits part.
bench-auto: install
	nice -n 10 $(PY) -m benchmarks.auto $(ARGS)

# The pruning benchmark (magnitude, OBS, N:M and structured pruning against torch.nn.utils.prune's global L1 on
# the digits MLP/CNN and MiniLM; writes benchmarks/results/pruning.{md,json}). ARGS=--quick for a shorter run,
# ARGS=--skip-minilm for the digits part.
bench-prune: install
	nice -n 10 $(PY) -m benchmarks.pruning $(ARGS)

# The API load benchmark (wrk, 1 thread and 32 connections on loopback, against a bare FastAPI app in alternating
# rounds, on the embedded default and on PostgreSQL + Redis with one API process each; 1,000 event streams; then a
# 2 GB upload with the API's RSS; about 6 minutes): writes benchmarks/results/load.{md,json}. wrk comes from Debian
# (`apt-get install wrk`), installed here when missing. ARGS="--only embedded --upload-gb 0" for a short run.
bench-load: install
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || \
		{ echo "bench-load needs wrk: apt-get install wrk (or https://github.com/wg/wrk)"; exit 1; }
	nice -n 10 $(PY) -m benchmarks.load $(ARGS)

# The conformance matrix: every architecture x upload format x pass variant x output format as a real job through
# the API (benchmarks/matrix.py); writes benchmarks/results/matrix.{json,md} and docs/support-matrix.md. All of it
# takes hours on 2 busy cores: ARGS="--only cnn" runs a family (or name architectures), ARGS="--slice fast" the
# slice that `make test` runs; each run merges into the results already there.
matrix: install
	nice -n 10 $(PY) -m benchmarks.matrix $(ARGS)

clean:
	rm -rf .deepopt .pytest_cache .mypy_cache .ruff_cache
