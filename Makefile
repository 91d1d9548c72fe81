# Two commands for a fresh clone: `make run` and `make test`. Everything else is a helper they call.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv lint typecheck check bench soak docs compose-secrets clean

REGISTRY ?= sample
run: $(STAMP)  ## everything up locally (embedded broker, redis-server, the services); REGISTRY=national for all of China
	$(BIN)/lastmile run --registry $(REGISTRY)

test: $(STAMP)  ## the whole suite: unit, integration and end-to-end, against a real broker and Redis
	$(BIN)/pytest
	bash scripts/other-pythons

venv: $(STAMP)

# The environment is rebuilt when the lock or the project metadata change. Dependencies install only
# from requirements.lock, every file checked against its hash.
$(STAMP): requirements.lock pyproject.toml tools/pyproject.toml scripts/bootstrap
	bash scripts/bootstrap
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . -e tools
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The benchmark scenarios against a fresh local stack, on the bundled national registry (BENCH_ARGS=--quick: the
# sample); results in bench-results/. E.g. make bench BENCH_ARGS="--duration 20".
BENCH_ARGS ?=
bench: $(STAMP)  ## the benchmark: prints the table of figures and targets, writes bench-results/latest.json
	bash scripts/bootstrap --bench
	$(BIN)/lastmile bench $(BENCH_ARGS)

# The soak: first the worker-kill fault test at 25 kill points, then `lastmile soak` (a steady load for 30 minutes
# while the worker, broker, Redis and coverage API are hurt in rotation, then an exact count); results in
# bench-results/soak-<time>.json. E.g. make soak SOAK_ARGS="--minutes 10 --rate 5000".
SOAK_ARGS ?=
soak: $(STAMP)  ## the soak: fault test, then a 30-minute load with faults; prints the table, writes JSON
	FAULT_KILL_POINTS=25 $(BIN)/pytest tests/faults/test_worker_kills.py -q
	$(BIN)/lastmile soak $(SOAK_ARGS)

docs: $(STAMP)  ## the documentation site (mkdocs-material) from docs/, built into site/
	$(BIN)/mkdocs build --strict

compose-secrets:  ## first run of docker compose: the secret files it mounts, with fresh tokens (kept if present)
	sh scripts/compose-secrets

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
