# The README's two commands: `make serve` (set up and run the service on the bundled models) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --constraint constraints.txt
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: install install-dev serve test test-all lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per dependency set, rebuilt when pyproject.toml or the constraints change.
$(VENV)/.runtime: $(PY) pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(PY) pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

serve: install
	$(PY) -m service --host $(HOST) --port $(PORT)

test: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -m "not docker and not browser"

test-all: install-dev
	$(PY) -m pytest

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install-dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install-dev
	$(PY) bench/flows.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
