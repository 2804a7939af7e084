# The two commands a newcomer needs: `make run` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make run SCENARIO=none: a static price and nothing enrolled
SCENARIO ?= crash-2020

.PHONY: run test bench histories lint fmt lock venv clean-state

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "hedgeguard needs Python 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing hedgeguard and its pinned dependencies into $(VENV) ..."
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## Run hedgeguard: Temporal dev server (UI on :8233), the simulated venues and the worker. A worker that dies is
## restarted; the dev server or the simulator dying stops all, and so does Ctrl-C.
run: $(STAMP)
	$(PY) scripts/devstack.py --scenario $(SCENARIO)

## The whole test suite, offline (lint first: a lint error fails it too). Everything but the crash replays and
## the whole-stack runs goes on two processes. Then two processes side by side: the chaos run (marked chaos; its
## output is printed when it ends) and, on the other, the March 2020 replay and the whole-stack runs (marked late),
## so the guards a replay races share the machine with one other run at most and no core idles for the chaos run's
## ~4 minutes. Fails when any part fails, and when none ran a test (pytest's exit 5 is "no test selected").
test: $(STAMP)
	$(VENV)/bin/ruff check .
	@quick=0; $(VENV)/bin/pytest -n 2 -m "not solo and not late" $(PYTEST_ARGS) || quick=$$?; \
	 log=$$(mktemp); $(VENV)/bin/pytest -p no:cacheprovider -m chaos $(PYTEST_ARGS) >$$log 2>&1 & chaos_pid=$$!; \
	 slow=0; $(VENV)/bin/pytest -m "(solo or late) and not chaos" $(PYTEST_ARGS) || slow=$$?; \
	 chaos=0; wait $$chaos_pid || chaos=$$?; \
	 echo "--- the chaos run (marked chaos), beside the tests above ---"; cat $$log; rm -f $$log; \
	 if [ $$quick -eq 5 ] && [ $$slow -eq 5 ] && [ $$chaos -eq 5 ]; then echo "no test ran"; exit 5; fi; \
	 for s in $$quick $$slow $$chaos; do if [ $$s -ne 0 ] && [ $$s -ne 5 ]; then exit $$s; fi; done

## Issue 7's figures: the 90-day protection backtest (tables + plots in bench-out/), reaction latency at
## N = 1 and 1,000, scale at 10,000 loans (goals: all hedged within 60 s, under 2 GiB). Each prints its table; the
## scale run takes 10-20 minutes (bench/README.md, "Scale", has the figures and the commit each was measured at).
BENCH_OUT ?= bench-out
bench: $(STAMP)
	@mkdir -p $(BENCH_OUT)
	$(PY) -m bench.backtest_loans --days 90 --json $(BENCH_OUT)/backtest90.json --plot $(BENCH_OUT)
	$(PY) -m bench.latency --loans 1 1000 --json $(BENCH_OUT)/latency.json
	$(PY) -m bench.scale --loans 10000 --json $(BENCH_OUT)/scale.json

## Record every workflow history the replay test holds again (tests/histories/), after a change of workflow code.
HISTORY_TESTS := tests/test_loan_guard.py tests/test_loan_alerts.py tests/test_alert_delivery.py \
	tests/test_alert_outage.py tests/test_worker.py tests/test_hedge_dev_server.py::test_operator_commands_on_a_running_hedge
histories: $(STAMP)
	HEDGEGUARD_RECORD_HISTORIES=1 $(VENV)/bin/pytest -n 2 -p no:cacheprovider $(HISTORY_TESTS)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_replay.py

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
