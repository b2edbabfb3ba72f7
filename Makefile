# The two commands a user needs: `make demo` and `make test`. Both (re)build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: install test lint demo fuzz clean

install: $(STAMP)

# Re-runs only when the dependency files change, so a second `make` installs nothing.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m jobs.demo $(ARGS)

# Schemathesis against the served /openapi.json; fails on any 5xx.
fuzz: $(STAMP)
	$(PY) -m jobs.bench.fuzz_serve

clean:
	rm -rf runs .pytest_cache .ruff_cache
