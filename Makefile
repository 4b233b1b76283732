# ClearScan developer entry points. `make run` and `make test` are the README's Quick start.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA_DIR ?= ./clearscan-data

.DEFAULT_GOAL := help
.PHONY: help install install-dev run test lint bench model clean image up down

help:
	@echo "make run      set up .venv and serve UI + API on http://127.0.0.1:8000"
	@echo "make test     set up dev extras, lint (ruff, mypy) and run the whole test suite"
	@echo "make install  set-up only (runtime dependencies)"
	@echo "make bench    benchmarks: predict latency/memory, serving throughput (ResNet-50 sized)"
	@echo "make model    retrain the bundled pneumonia model (needs the dataset in ../shared)"
	@echo "make image    build the container image $(IMAGE) (deploy/docker/Dockerfile)"
	@echo "make up       start the Docker Compose stack (deploy/compose.yaml) on http://localhost:8000"
	@echo "make down     stop the Compose stack (its volumes, the data, stay)"

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
	$(BIN)/python benchmarks/bench_measure.py
	$(BIN)/python benchmarks/bench_dicom_outputs.py

model: install-dev
	$(BIN)/python scripts/train_bundled_model.py --data ../shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz
	$(BIN)/python scripts/fit_ood_reference.py --data ../shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Containers (docs/deployment.md). IMAGE_ARGS: extra `docker build` options, e.g.
# --build-arg EXTRAS=postgres,s3,queue,train. Compose v2 (`docker compose`) when present, else
# v1 with --compatibility (which honours the api service's deploy.replicas).
IMAGE   ?= clearscan:latest
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo "docker-compose --compatibility")

image:
	docker build -f deploy/docker/Dockerfile -t $(IMAGE) $(IMAGE_ARGS) .

up: image
	sh deploy/compose/init-secrets.sh
	CLEARSCAN_IMAGE=$(IMAGE) $(COMPOSE) -p clearscan -f deploy/compose.yaml up -d
	@echo "ClearScan on http://localhost:$${CLEARSCAN_HTTP_PORT:-8000} (user admin, password in deploy/compose/secrets/admin_password)"

down:
	CLEARSCAN_IMAGE=$(IMAGE) $(COMPOSE) -p clearscan -f deploy/compose.yaml down
