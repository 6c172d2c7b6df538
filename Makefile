# make demo: whole pipeline on a generated cohort.  make test: the whole test suite.  make test-fast: without the
# tests marked slow.  make lint: ruff, ruff format --check and mypy.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-out

.PHONY: demo test test-fast lint venv browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

# The report test opens report.html in headless Chromium (Debian's chromium package; installing it needs root).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "make test: install Debian's chromium package (apt-get install chromium) for the report test"; exit 1; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Lint (ruff), formatting (ruff format) and types (mypy; pyproject.toml lists the modules not yet clean).
lint: $(STAMP)
	$(BIN)/ruff check tipsprog tests benchmarks
	$(BIN)/ruff format --check tipsprog tests benchmarks
	$(BIN)/mypy

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache
