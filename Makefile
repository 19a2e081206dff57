# DeepOpt. `make run` and `make test` are all a new user needs; both install into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepopt-installed
TORCH_VERSION := 2.13.0

.PHONY: install run api worker test lint typecheck migrate bench bench-quant clean

install: $(STAMP)

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
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
	$(PY) -m ruff check app worker deepopt_core tests benchmarks examples

typecheck: install
	$(PY) -m mypy

test: install lint typecheck
	$(PY) -m pytest -q -ra

bench-quant: install
	$(PY) benchmarks/quantization.py

clean:
	rm -rf .deepopt .pytest_cache .mypy_cache .ruff_cache
