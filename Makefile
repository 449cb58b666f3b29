# Strongroom: two commands matter.
#   make run   - a working hub on the embedded defaults at http://127.0.0.1:8000 (+ the DICOM destination)
#   make test  - install everything the tests need (system packages included) and run them all
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test test-deps lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.run-installed
	$(BIN)/strongroom init --demo
	$(BIN)/strongroom dicom serve & dicom=$$!; trap 'kill $$dicom 2>/dev/null' EXIT INT TERM; $(BIN)/strongroom serve

test-deps: $(VENV)/.test-installed
	bash scripts/install-test-deps.sh

test: test-deps lint
	$(BIN)/pytest -q -n 2 --dist worksteal --durations=30

# quality gates, run first by `make test`: lint (with no stale noqa), types, dead code
lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/vulture

clean:
	rm -rf $(VENV) var
