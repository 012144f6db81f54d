# Two commands do all the set-up on a fresh machine:  make demo  and  make test
# Each creates .venv when missing and installs what it needs (no torch for the demo: it runs the torch-free runtime).

PYTHON ?= python3
VENV ?= .venv
RUNTIME_VENV ?= .venv-runtime
PIP_FLAGS ?= --disable-pip-version-check -q

.PHONY: demo test test-fast test-torchfree demo-bundle bench bench-short lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel

# runtime only: what a cart or a vendor installs
$(VENV)/.runtime-installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[runtime,dev]"
	touch $@

# everything: training, export and the full test suite
$(VENV)/.all-installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[runtime,train,dev]"
	touch $(VENV)/.runtime-installed $@

demo: $(VENV)/.runtime-installed
	$(VENV)/bin/sonogate demo --bundle demo/bundle --out out/demo

# a second venv without torch proves the runtime never needs it
$(RUNTIME_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) -e ".[runtime,dev]"
	touch $@

test-torchfree: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/python -m pytest -q -m torchfree

test-fast: $(VENV)/.all-installed
	$(VENV)/bin/python -m pytest -q -m "not slow"

test: $(VENV)/.all-installed
	$(VENV)/bin/python -m pytest -q
	$(MAKE) test-torchfree

# regenerate the committed demo bundle (phantom -> SimSiam -> heads -> ONNX/INT8/OpenVINO -> calibration)
demo-bundle: $(VENV)/.all-installed
	bash scripts/make_demo_bundle.sh

bench: $(VENV)/.all-installed
	$(VENV)/bin/sonogate bench --out benchmarks/results

bench-short: $(VENV)/.all-installed
	$(VENV)/bin/sonogate bench --short --out out/bench-short

lint: $(VENV)/.all-installed
	$(VENV)/bin/ruff check sonogate tests benchmarks

clean:
	rm -rf out .pytest_cache
