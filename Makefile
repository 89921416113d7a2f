# phrase_jax: every target installs what it needs into a local virtualenv (.venv).
# Settings can be overridden on the command line, e.g. `make data POP909_DIR=/data/pop909`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
POP909_DIR ?= ../shared/data/pop909
DATA_DIR ?= data
RUNS_DIR ?= runs
WORKERS ?= $(shell nproc)
# Tests and CI simulate 8 devices so every sharding path runs on a CPU-only machine.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
PYTEST_ARGS ?=

.PHONY: install install-parity test lint format data data-chorales bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $@

# torch/transformers/diffusers only for the parity tests against the reference layouts.
$(VENV)/.installed-parity: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,demo,parity]'
	touch $@

install: $(VENV)/.installed

install-parity: $(VENV)/.installed-parity

test: $(VENV)/.installed-parity
	$(TEST_ENV) POP909_DIR=$(POP909_DIR) $(PY) -m pytest -q -rs $(PYTEST_ARGS) tests

lint: $(VENV)/.installed
	$(BIN)/ruff check phrase_jax data_pipelines experiments tests benchmarks
	$(BIN)/ruff format --check phrase_jax data_pipelines experiments tests benchmarks

format: $(VENV)/.installed
	$(BIN)/ruff format phrase_jax data_pipelines experiments tests benchmarks

data: $(VENV)/.installed
	$(PY) -m data_pipelines.prepare --dataset pop909 --pop909_dir $(POP909_DIR) \
		--out_dir $(DATA_DIR)/pop909 --workers $(WORKERS)

data-chorales: $(VENV)/.installed
	$(PY) -m data_pipelines.prepare --dataset chorales --out_dir $(DATA_DIR)/chorales \
		--workers $(WORKERS)

bench: $(VENV)/.installed
	$(PY) -m benchmarks.bench_pipelines --data_dir $(DATA_DIR)/pop909

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
