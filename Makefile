# The two commands a user needs: `make demo` and `make test`. Both (re)build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: install test lint demo serve fuzz clean

install: $(STAMP)

# Re-runs only when the dependency files change, so a second `make` installs nothing.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# ruff, then the layer contract in pyproject.toml ([tool.importlinter]): imports run downhill only.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m jobs.demo $(ARGS)

# The shipped Serve config in the foreground (MODEL=<export> to serve another export), with the Ray settings
# it was measured with (serve_app/local.py SERVE_ENV).
serve: $(STAMP)
	RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 MTL_MODEL_DIR=$(MODEL) \
		$(VENV)/bin/serve run serve_app/serve_config.yaml

# Schemathesis against the served /openapi.json; fails on any 5xx.
fuzz: $(STAMP)
	$(PY) -m jobs.bench.fuzz_serve

clean:
	rm -rf runs .pytest_cache .ruff_cache
