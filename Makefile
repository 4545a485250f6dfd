# Quick start: `make run` (set up, then serve on 127.0.0.1:8000) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# make test runs on this many pytest-xdist workers: the suite mostly compiles, on one core at a time;
# two workers on 2 cores took a fresh clone's make test from 25:22 to 13:12 (tests/conftest.py
# groups the tests).
TEST_WORKERS ?= 2
LOAD_ARGS ?= --scenario mixed --duration 60
SOAK_ARGS ?= --duration 600

FUZZ_EXAMPLES ?= 450

.PHONY: install run test test-slow lint format bench bench-service load soak fuzz openapi lock clean

# The exact versions every run installs (requirements-dev.lock: the service, gRPC and the test
# tools; the Docker image installs requirements.lock, its runtime subset), then the package itself.
$(VENV)/.installed: pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Re-resolves both lock files from pyproject.toml's bounds (after changing a dependency), for
# Python 3.11 on every platform, what ships pinned as what is tested; tests/deploy/test_lock.py checks that they still agree with it.
UV_COMPILE = $(PY) -m uv pip compile pyproject.toml --universal --python-version 3.11 --quiet
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv>=0.9,<1'
	$(UV_COMPILE) --extra dev -o requirements-dev.lock
	$(UV_COMPILE) --extra grpc --constraint requirements-dev.lock -o requirements.lock

run: install
	$(PY) -m service --host $(HOST) --port $(PORT)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	JAX_PLATFORMS=cpu $(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# The schemathesis contract run of `make test`, with many more cases (>= 5,000; a few minutes).
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_MINIMUM_CASES=5000 JAX_PLATFORMS=cpu \
		$(PY) -m pytest tests/e2e/test_schemathesis.py $(PYTEST_ARGS)

# Rewrites openapi.json: the OpenAPI document of a server with the default settings.
openapi: install
	env -i PATH="$$PATH" HOME="$$HOME" $(PY) -m service --print-openapi > openapi.json

bench: install
	$(PY) bench/core.py
	$(PY) bench/soft.py

bench-service: install
	$(PY) bench/service.py

load: install
	JAX_PLATFORMS=cpu $(PY) load/run.py $(LOAD_ARGS)

soak: install
	JAX_PLATFORMS=cpu $(PY) load/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
