# The two commands of the README: `make demo` and `make test`. Each does all set-up first.
VENV ?= .venv
PY := $(VENV)/bin/python
EDGERT := $(VENV)/bin/edgert
PROMPT ?= The three primary colors are

.PHONY: setup setup-bench demo test test-fast parity lint clean

setup:
	@tools/setup.sh

setup-bench:
	@tools/setup.sh bench

# pull SmolLM2-135M, generate with it, print tokens/s
demo: setup
	$(EDGERT) pull smollm2-135m
	$(EDGERT) generate smollm2-135m -p "$(PROMPT)" -n 64 --temp 0

# every tier that runs without llama.cpp: unit, kernels (host + aarch64 under qemu)
test: setup
	$(PY) -m pytest -q

# parity with llama.cpp (installs llama-cpp-python into the venv first)
parity: setup-bench
	$(PY) -m pytest -q -m parity tests/parity

lint: setup
	$(VENV)/bin/ruff check edgert compiler tests tools

clean:
	rm -rf build dist *.egg-info .pytest_cache
