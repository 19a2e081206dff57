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

.PHONY: install run api worker test test-fast lint typecheck migrate openapi docs matrix clean

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

# The inner loop, a few minutes: what needs no service. Not the tests that use PostgreSQL and Redis (`postgres`,
# marked in tests/conftest.py for the backend_env fixture's postgres_redis runs), restart them (`serial`), run
# for long (`slow`) or start API and worker processes for whole jobs (`e2e`: tests/e2e). No lint or typecheck
# (`make lint typecheck`). ARGS go to pytest: ARGS="tests/deepopt_core -k prune"; a -m in ARGS replaces the
# selection (ARGS='-m "e2e and not postgres"').
FAST_TESTS := not serial and not postgres and not slow and not e2e
test-fast: install
	$(PY) -m pytest -q -ra -n 2 --dist loadfile -m "$(FAST_TESTS)" $(ARGS)

# The committed OpenAPI spec and the generated client: run after changing the API or a pass's config.
openapi: install
	$(PY) -m app.openapi --client

# The generated parts of docs/ (the settings table from Settings, the pass reference from the pass configs): run
# after changing either; tests/test_docs.py fails when a generated part is stale.
docs: install
	$(PY) docs/generate.py

# The benchmarks: `make bench-NAME` runs benchmarks/MODULE.py (at nice 10; ARGS go to the script), which writes
# benchmarks/results/MODULE.{md,json}. NAME=MODULE, what it measures and for how long:
#   quant=quantization  MiniLM + digits CNN; about 5 minutes on 2 idle cores. ARGS=--quick for a shorter run.
#   train=training      distill and finetune on digits, breast cancer and MiniLM; about an hour on 2 busy cores.
#                       ARGS="--only digits cancer" runs a part.
#   auto=auto           auto against a grid of hand recipes, 1% bound, on the digits CNN and MiniLM; about ten
#                       minutes on 2 busy cores. ARGS=--skip-minilm runs the digits part.
#   prune=pruning       magnitude, OBS, N:M and structured pruning against torch.nn.utils.prune's global L1 on the
#                       digits MLP/CNN and MiniLM (its time is not recorded yet). ARGS=--quick for a shorter run,
#                       ARGS=--skip-minilm for the digits part.
#   load=load           the API under wrk (1 thread and 32 connections on loopback) against a bare FastAPI app in
#                       alternating rounds, on the embedded default and on PostgreSQL + Redis with one API process
#                       each; 1,000 event streams; then a 2 GB upload with the API's RSS; about 6 minutes.
#                       ARGS="--only embedded --upload-gb 0" for a short run.
BENCHMARKS := quant=quantization train=training auto=auto prune=pruning load=load
# Commands a benchmark needs beyond .venv, each from the Debian package of its name, installed when missing.
BENCH_TOOLS_load := wrk
bench_module = $(patsubst $*=%,%,$(filter $*=%,$(BENCHMARKS)))

# Not .PHONY: make skips pattern rules for phony targets. `install` is phony, so a bench-% target always runs.
bench-%: install
	@test -n "$(bench_module)" || { echo "no benchmark '$*'; make bench-NAME with NAME one of:" \
		"$(foreach b,$(BENCHMARKS),$(firstword $(subst =, ,$(b))))"; exit 1; }
	@for tool in $(BENCH_TOOLS_$*); do \
		command -v $$tool >/dev/null || { apt-get update -qq && apt-get install -y -qq $$tool; } || \
			{ echo "bench-$* needs $$tool: apt-get install $$tool"; exit 1; }; \
	done
	nice -n 10 $(PY) -m benchmarks.$(bench_module) $(ARGS)

# The conformance matrix: every architecture x upload format x pass variant x output format as a real job through
# the API (benchmarks/matrix.py); writes benchmarks/results/matrix.{json,md} and docs/support-matrix.md. All of it
# takes hours on 2 busy cores: ARGS="--only cnn" runs a family (or name architectures), ARGS="--slice fast" the
# slice that `make test` runs; each run merges into the results already there.
matrix: install
	nice -n 10 $(PY) -m benchmarks.matrix $(ARGS)

clean:
	rm -rf .deepopt .pytest_cache .mypy_cache .ruff_cache
