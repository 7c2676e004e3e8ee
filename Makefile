# One entry point for developers and CI: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LINTED := src tests $(wildcard bench) $(wildcard clients)

.PHONY: run test lint typecheck pytest bench fmt clean wheels image image-test systemd-test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

run: $(STAMP)
	mkdir -p run
	$(BIN)/sidkeyd serve -c config/sidkeyd.dev.toml

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest tests/unit tests/integration tests/e2e

# The image installs these offline: the host's pip fetches them (its index, its proxy).
wheels: $(STAMP)
	rm -rf build/wheels
	$(BIN)/python -m pip wheel --quiet -c constraints.txt --wheel-dir build/wheels '.[aws,vault]'

image: wheels
	docker build -t sidkeyd .

# Builds the image (from a debootstrap base, cached) and tests it with a real dockerd.
image-test: wheels
	tests/image/run.sh $(BIN)/pytest

# The shipped units under a real systemd (systemd-nspawn on a debootstrap tree, cached).
systemd-test: $(STAMP)
	PYTHON=$(BIN)/python sh tests/systemd/run-under-nspawn.sh

bench: $(STAMP)
	$(BIN)/python bench/run.py

fmt: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) run .mypy_cache .pytest_cache .ruff_cache
