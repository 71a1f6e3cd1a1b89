# Two commands on a fresh machine: `make demo` and `make test`.
# `make test RESOLUTION=lowest` runs the same pytest suite on the lowest versions setup.cfg
# admits (uv's lowest-direct resolution, in .venv-lowest); lint and types need no second pass.
PYTHON ?= python3
RESOLUTION ?= highest
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOWEST_VENV := .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed

ifeq ($(RESOLUTION),highest)
TEST_BIN := $(BIN)
TEST_STAMP := $(STAMP)
TEST_STEPS := lint typecheck pytest
else ifeq ($(RESOLUTION),lowest)
TEST_BIN := $(LOWEST_VENV)/bin
TEST_STAMP := $(LOWEST_STAMP)
TEST_STEPS := pytest
else
$(error RESOLUTION is highest (the default) or lowest, not '$(RESOLUTION)')
endif

.PHONY: demo test lint typecheck pytest dashboard bench bench-quick clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Every direct requirement of `.[test]` at the lowest version its range admits, the rest at
# their newest; uv installs them, pip installs uv.
$(LOWEST_STAMP): setup.cfg pyproject.toml
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LOWEST_VENV)/bin/pip install --quiet uv
	$(LOWEST_VENV)/bin/uv pip install --quiet --python $(LOWEST_VENV)/bin/python \
		--resolution lowest-direct -e '.[test]'
	touch $(LOWEST_STAMP)

demo: $(STAMP)
	$(BIN)/flask --app example_app:create_app run --host 127.0.0.1 --port 5000

test: $(TEST_STEPS)

lint: $(STAMP)
	$(BIN)/ruff check flask_gateway_obs tests example_app benchmarks scripts
	$(BIN)/ruff format --check flask_gateway_obs tests example_app benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP)
	$(TEST_BIN)/pytest

# The Grafana dashboard shipped as package data, rebuilt with grafana-foundation-sdk.
dashboard: $(STAMP)
	$(BIN)/python -m flask_gateway_obs.ops.build_dashboard

# Benchmarks: the peers they compare against go into .venv only (never install_requires);
# wrk from Debian's packages when we may install it, else the harness's Python load client.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/pip install --quiet -r benchmarks/requirements.txt
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& { DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1; }; }; } \
		|| echo "wrk not installed: the benchmarks use their Python load client"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
