# ClearScan developer entry points. `make run` and `make test` are the README's Quick start.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA_DIR ?= ./clearscan-data

.DEFAULT_GOAL := help
.PHONY: help install install-dev run test lint bench model clean

help:
	@echo "make run      set up .venv and serve UI + API on http://127.0.0.1:8000"
	@echo "make test     set up dev extras, lint (ruff, mypy) and run the whole test suite"
	@echo "make install  set-up only (runtime dependencies)"
	@echo "make bench    benchmarks: predict latency/memory, serving throughput (ResNet-50 sized)"
	@echo "make model    retrain the bundled pneumonia model (needs the dataset in ../shared)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "ClearScan needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/clearscan serve --data-dir $(DATA_DIR)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: install-dev lint
	$(BIN)/python -m pytest

bench: install-dev
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_serving.py

model: install-dev
	$(BIN)/python scripts/train_bundled_model.py --data ../shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz
	$(BIN)/python scripts/fit_ood_reference.py --data ../shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
