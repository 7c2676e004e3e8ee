# One entry point for developers and CI: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LINTED := src tests $(wildcard bench) $(wildcard clients)

.PHONY: run test lint typecheck pytest bench fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(STAMP)
	mkdir -p run
	$(BIN)/sidkeyd serve -c config/sidkeyd.dev.toml

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest tests/unit tests/integration tests/e2e

bench: $(STAMP)
	$(BIN)/python bench/run.py

fmt: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) run .mypy_cache .pytest_cache .ruff_cache
