# Two commands do all the set-up on a fresh clone (Python 3.11+, Node.js/npm present):
#   make demo   - a paid round trip on a local chain
#   make test   - the test suite
#   make lint   - ruff and mypy --strict, as CI runs them
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test install node clean check-token lint

demo: install node
	X402GATE_ANVIL=$(CURDIR)/node_modules/.bin/anvil $(VENV)/bin/x402gate demo

test: install node
	X402GATE_ANVIL=$(CURDIR)/node_modules/.bin/anvil $(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet -e ".[all]" --group test
	touch $(STAMP)

# Lint and type checks with the versions pinned in the dev group (a superset of test).
DEV_STAMP = $(VENV)/.installed-dev

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --group dev
	touch $(DEV_STAMP)

lint: $(DEV_STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m ruff format --check src tests bench examples
	$(PY) -m mypy

node: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch node_modules/.installed

check-token: node
	node scripts/build-token.mjs --check

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis

# Benchmarks (bench/README.md): every figure of docs/performance.md; BENCH_ARGS=--quick for a smoke run.
.PHONY: bench
bench: install node
	X402GATE_ANVIL=$(CURDIR)/node_modules/.bin/anvil $(PY) bench/all.py $(BENCH_ARGS)
