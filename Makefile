# The two commands: `make serve` (set up and run the service), `make test` (run every test).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PORT ?= 8000
WORKERS ?= 1
RISKENGINE_API_KEYS ?= demo:demo-key
export RISKENGINE_API_KEYS

.PHONY: install serve test lint constraints bench clean

# dev = the serving install + the lab extra (training: `make serve` trains the first model) + test tools.
# Not quiet: a first install downloads a few hundred MB and takes minutes; pip shows what it is doing.
$(VENV)/.installed: pyproject.toml
	@echo "== installing riskengine[dev] into $(VENV) (first run: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	touch $@
	@echo "== installed"

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/riskengine serve --host 127.0.0.1 --port $(PORT) --workers $(WORKERS)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# the service image's pinned versions (Dockerfile): regenerate after changing dependencies
constraints: install
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra lab --python-version 3.11 --universal -o constraints.txt

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var models/*/ .pytest_cache
