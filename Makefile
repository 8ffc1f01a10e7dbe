# medpipe: `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
DATA ?= data
ARGS ?=

# Offline by default: no telemetry from Prefect, MLflow, DVC or GX (pipeline/_env.py sets them too).
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site-cache

.PHONY: help install install-gpu data run test lint dvc-yaml dvc-repro mlflow-ui mlflow-server prefect-ui prefect-server lock bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# --compile-bytecode: the .pyc files are written once, here; where PYTHONDONTWRITEBYTECODE is set, every process
# would otherwise compile TensorFlow, MLflow, GX and Prefect from source again (about 20 s each, measured).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

install: $(STAMP)  ## create .venv and install the pinned dependencies (CPU TensorFlow)

# The GPU build of a backend (Linux + NVIDIA GPU): BACKEND=tensorflow swaps in TensorFlow with its CUDA wheels,
# BACKEND=jax adds JAX's CUDA 12 plugin (pyproject's gpu-jax extra); then train with train.backend: jax.
BACKEND ?= tensorflow
install-gpu: $(STAMP)  ## GPU wheels for BACKEND=tensorflow (default) or BACKEND=jax (Linux + NVIDIA GPU)
	case "$(BACKEND)" in \
	  jax) $(UV) pip install -q --python $(BIN)/python "jax[cuda12]==0.10.2" ;; \
	  tensorflow) $(UV) pip uninstall -q --python $(BIN)/python tensorflow-cpu && \
	    $(UV) pip install -q --python $(BIN)/python "tensorflow[and-cuda]==2.21.0" ;; \
	  *) echo "BACKEND must be tensorflow or jax, not $(BACKEND)" >&2; exit 2 ;; \
	esac

$(DATA)/manifest.csv: | $(STAMP)
	$(BIN)/medpipe data synth --out $(DATA)

data: $(DATA)/manifest.csv  ## build the built-in synthetic chest X-ray data set if missing

run: $(STAMP) $(DATA)/manifest.csv  ## install, build data if missing, run the training flow
	$(BIN)/medpipe run --data $(DATA) $(ARGS)

# Two pytest workers (pytest-xdist), a test module each at a time, so module fixtures and the ordered
# fault-injection chain stay in one process: end-to-end tests wait on servers and subprocesses much of
# the time. PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
test: $(STAMP)  ## run the test suite (PYTEST_WORKERS=2 processes by default)
	$(BIN)/python -m pytest --durations=20 $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadscope) $(ARGS)

lint: $(STAMP)  ## ruff check and ruff format --check (code, tests, benchmarks), mypy (pipeline, flows, cli)
	$(BIN)/ruff check pipeline flows cli tests benchmarks
	$(BIN)/ruff format --check pipeline flows cli tests benchmarks
	$(BIN)/mypy

dvc-yaml: $(STAMP)  ## regenerate dvc.yaml from the step declaration (pipeline/steps.py)
	$(BIN)/python -m pipeline.steps > dvc.yaml

dvc-repro: $(STAMP) $(DATA)/manifest.csv  ## run the same steps as DVC stages
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro $(ARGS)

# One worker and no job consumers: the UI of one project needs no more (MLflow's defaults: 4 workers,
# 7 job consumers, ~3.7 GB on a 2-core machine). MLFLOW_UI_WORKERS=4 for more.
MLFLOW_UI_WORKERS ?= 1
mlflow-ui: $(STAMP)  ## browse runs and models at http://127.0.0.1:5000 (one light worker)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db \
		--host 127.0.0.1 --port 5000 --workers $(MLFLOW_UI_WORKERS)

prefect-ui: $(STAMP)  ## browse flow runs at http://127.0.0.1:4200
	$(BIN)/prefect server start --host 127.0.0.1

prefect-server: prefect-ui  ## a Prefect server for schedules: then export PREFECT_API_URL=http://127.0.0.1:4200/api

# A PostgreSQL backend: make mlflow-server MLFLOW_BACKEND=postgresql://user@host/mlflow (needs psycopg2-binary).
MLFLOW_BACKEND ?= sqlite:///mlflow/mlflow.db
MLFLOW_ARTIFACTS ?= mlflow/artifacts
MLFLOW_PORT ?= 5000
MLFLOW_HOST ?= 127.0.0.1
mlflow-server: $(STAMP)  ## a shared MLflow tracking server on http://127.0.0.1:5000 (MLFLOW_BACKEND, MLFLOW_ARTIFACTS)
	$(BIN)/mlflow server --backend-store-uri $(MLFLOW_BACKEND) --artifacts-destination $(MLFLOW_ARTIFACTS) \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

lock: $(STAMP)  ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra cpu --extra test --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o requirements.lock

bench: $(STAMP)  ## run the benchmarks (JSON lines; figures in docs/benchmarks.md)
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/validate.py
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/dask_steps.py
	$(BIN)/python benchmarks/training.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/memory.py
	-$(BIN)/python benchmarks/medmnist.py   # needs ../shared/datasets/medmnist

clean:  ## remove pipeline outputs (keeps data/, mlflow/ and .venv)
	rm -rf outputs
