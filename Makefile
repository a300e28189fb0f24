# Two commands do all the set-up on a fresh machine with Python 3.11 and Node 20:
#   make serve   start captify-ws on http://127.0.0.1:3000 (embedded defaults) and print the
#                address of the demo page; installs the runtime only
#   make test    run the whole test suite (lint, types, tests against real clients and
#                services); installs the development tools and the npm test clients first
#   make test-fast   the unit tier only (no npm, no services, no subprocesses): seconds
#   make coverage    the whole suite under coverage, subprocess servers included; prints the
#                    share of src lines run (a separate target: measuring slows every test)

PYTHON ?= python3
VENV ?= .venv
PIP_QUIET ?= -q

.PHONY: serve test test-fast coverage lint typecheck pytest setup services demo bench clean

# The virtualenv with captify-ws (editable) and its runtime dependencies only.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(VENV)/bin/pip install $(PIP_QUIET) -e .
	touch $@

# The development tools on top (pytest, mypy, ruff, playwright …).
$(VENV)/.dev: $(VENV)/.runtime pyproject.toml
	$(VENV)/bin/pip install $(PIP_QUIET) -e ".[dev]"
	touch $@

tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.dev tests/js/node_modules/.installed

serve: $(VENV)/.runtime
	$(VENV)/bin/captify-ws serve

services:
	bash scripts/system-deps.sh
	bash scripts/services.sh

# ruff, and the architecture's import contracts (import-linter, [tool.importlinter] in
# pyproject.toml: the layers of docs/architecture.md)
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests bench demo scripts
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

pytest: setup services
	$(VENV)/bin/pytest

test: lint typecheck pytest

# The unit tier: codecs, rooms, stores on memory/SQLite, settings — under 15 s, no npm needed.
test-fast: $(VENV)/.dev
	$(VENV)/bin/pytest -q -m "unit and not services"

# Every test, with captify-ws measured in this process and in every Python subprocess it starts
# (captify-ws serve, --workers); the report lists the files with the most lines never run.
coverage: setup services
	rm -rf .coverage-data
	$(VENV)/bin/coverage run -m pytest -q
	$(VENV)/bin/coverage combine -q
	$(VENV)/bin/coverage report

# Rebuild the demo page's bundle (src/captify_ws/static/demo/) from demo/ and the pinned npm
# packages; tests/test_demo.py fails while the shipped bundle is stale.
demo: tests/js/node_modules/.installed
	node demo/build.mjs

bench: $(VENV)/.dev
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) tests/js/node_modules .coverage-data
