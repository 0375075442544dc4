# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean install chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

install: $(STAMP)

# The console's browser tests drive Debian's chromium (never a browser downloaded by
# Playwright). Installed where apt-get may run; elsewhere those tests skip and say why, so
# this step never fails the set-up.
chromium:
	@if [ -x /usr/bin/chromium ]; then \
	  echo "chromium: /usr/bin/chromium is installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "chromium: not installed and no apt-get here; the browser tests will skip (install chromium to run them)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "chromium: installing Debian's chromium for the browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "chromium: apt-get install failed; the browser tests will skip"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  echo "chromium: installing Debian's chromium for the browser tests (sudo)"; \
	  { sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "chromium: apt-get install failed; the browser tests will skip"; \
	else \
	  echo "chromium: not installed; installing it needs root or sudo without a password; the browser tests will skip"; \
	fi

demo: $(STAMP)
	$(BIN)/passerelle demo

lint: $(STAMP)
	$(BIN)/ruff check --no-cache src tests
	$(BIN)/ruff format --no-cache --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest --durations=20 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .passerelle .pytest_cache .mypy_cache .ruff_cache
