# Two commands on a fresh machine: `make serve` and `make test`; each creates .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup serve test test-fast lint bench embedded report

setup:
	@scripts/setup.sh

serve: setup  ## serve the bundled default model on http://127.0.0.1:8000
	$(PY) -m server

test: setup  ## the whole test suite (what CI runs)
	$(PY) -m pytest

test-fast: setup  ## the edit loop: unit and in-process tests, no end-to-end runs (-m "not slow")
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup  ## benchmarks, results in docs/benchmarks.md
	$(PY) -m benchmarks

embedded: setup  ## retrain the bundled default model from the packaged real data
	$(PY) -m training train --config training/presets/embedded.json --store model_store/bundled --name embedded --replace

report: setup  ## docs/results.md and docs/accuracy_vs_budget.png
	$(PY) -m training report
