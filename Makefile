# Two commands do all the set-up on a fresh machine with Python 3.11 and Node 20:
#   make serve   start captify-ws on http://127.0.0.1:3000 (embedded defaults)
#   make test    run the whole test suite (lint, types, tests against real clients and services)

PYTHON ?= python3
VENV ?= .venv
PIP_QUIET ?= -q

.PHONY: serve test lint typecheck pytest setup services bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(VENV)/bin/pip install $(PIP_QUIET) -e ".[dev]"
	touch $@

tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed tests/js/node_modules/.installed

serve: $(VENV)/.installed
	$(VENV)/bin/captify-ws serve

services:
	bash scripts/system-deps.sh
	bash scripts/services.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: setup services
	$(VENV)/bin/pytest

test: lint typecheck pytest

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) tests/js/node_modules
