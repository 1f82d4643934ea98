# The two commands: `make serve` (set up and run the service), `make test` (run every test).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PORT ?= 8000
WORKERS ?= 1
RISKENGINE_API_KEYS ?= demo:demo-key
export RISKENGINE_API_KEYS

.PHONY: install serve test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/riskengine serve --host 127.0.0.1 --port $(PORT) --workers $(WORKERS)

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var models/*/ .pytest_cache
