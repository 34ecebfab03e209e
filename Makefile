# Two entry points for a fresh machine: `make serve` and `make test`.
# Both create .venv and install the project into it first (once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-shared lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/gateway serve

lint: $(STAMP)
	$(BIN)/ruff check gateway policies engine accounts tests bench
	$(BIN)/ruff format --check gateway policies engine accounts tests bench
	$(BIN)/mypy gateway policies engine accounts

test: lint
	$(BIN)/python -m pytest

test-shared: $(STAMP)
	$(BIN)/python -m pytest --shared-stores

bench: $(STAMP)
	$(BIN)/python bench/serving.py
