# The two set-up commands of the README: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3

.PHONY: demo test deps lint unit bench

deps:
	PYTHON=$(PYTHON) ./scripts/install-deps.sh

demo: deps
	backupd demo

test: deps
	$(PYTHON) -m ruff check backupd tests bench
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -q tests

lint:
	$(PYTHON) -m ruff check backupd tests bench
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest -q tests/unit
