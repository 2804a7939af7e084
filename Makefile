# The two commands a newcomer needs: `make run` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make run SCENARIO=none: a static price and nothing enrolled
SCENARIO ?= crash-2020

.PHONY: run test lint fmt lock venv clean-state

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "hedgeguard needs Python 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing hedgeguard and its pinned dependencies into $(VENV) ..."
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## Run hedgeguard: Temporal dev server (UI on :8233), the worker, and what later issues add. Ctrl-C stops all.
run: $(STAMP)
	$(PY) scripts/devstack.py --scenario $(SCENARIO)

## The whole test suite, offline (lint first: a lint error fails it too).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .

## Re-pin every dependency after changing pyproject.toml ranges (writes requirements.lock).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lockvenv/bin/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
	rm -rf .lockvenv
	@echo "requirements.lock updated; commit it"

## Forget local state (Temporal history, the store). Stops nothing: run it with the stack down.
clean-state:
	rm -rf .state
