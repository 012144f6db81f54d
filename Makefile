# Two commands do all the set-up on a fresh machine:  make demo  and  make test
# Each creates .venv when missing and installs what it needs (no torch for the demo: it runs the torch-free runtime).
# Both install the exact versions of requirements/*.lock (regenerate them with `make lock`), then the package itself
# without dependencies, so every machine (CI included) tests what was tested here, whatever was released since.

PYTHON ?= python3
VENV ?= .venv
RUNTIME_VENV ?= .venv-runtime
LATEST_VENV ?= .venv-latest
PIP_FLAGS ?= --disable-pip-version-check -q
UV_VERSION ?= 0.13.9
# the platform every lock is resolved for (what CI, the carts and this machine run)
LOCK_TARGET ?= --python-version 3.11 --python-platform x86_64-manylinux_2_28
LOCK_FLAGS ?=
LOCK_ALL := requirements/dev.lock
LOCK_RUNTIME := requirements/runtime.lock
LOCK_RUNTIME_DEV := requirements/runtime-dev.lock

.PHONY: demo test test-fast test-torchfree test-latest lock demo-bundle bench bench-short lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel

# runtime (no torch) and the test tools: what make demo needs
$(VENV)/.runtime-installed: pyproject.toml $(LOCK_RUNTIME_DEV) | $(VENV)/bin/python
	$(VENV)/bin/pip install $(PIP_FLAGS) -r $(LOCK_RUNTIME_DEV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	touch $@

# everything: training, export and the full test suite
$(VENV)/.all-installed: pyproject.toml $(LOCK_ALL) | $(VENV)/bin/python
	$(VENV)/bin/pip install $(PIP_FLAGS) -r $(LOCK_ALL)
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	touch $(VENV)/.runtime-installed $@

# Regenerate the locks from pyproject.toml's ranges with uv (keeps the locked versions that still satisfy them;
# `make lock LOCK_FLAGS=--upgrade` takes the newest releases). The runtime locks are constrained by the full one,
# so a vendor's torch-free install has exactly the versions the suite ran with.
lock: | $(VENV)/bin/python
	$(VENV)/bin/pip install $(PIP_FLAGS) uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra runtime --extra train --extra dev $(LOCK_TARGET) $(LOCK_FLAGS) \
		--custom-compile-command "make lock" -o $(LOCK_ALL)
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra runtime -c $(LOCK_ALL) $(LOCK_TARGET) \
		--custom-compile-command "make lock" -o $(LOCK_RUNTIME)
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra runtime --extra dev -c $(LOCK_ALL) $(LOCK_TARGET) \
		--custom-compile-command "make lock" -o $(LOCK_RUNTIME_DEV)

demo: $(VENV)/.runtime-installed
	$(VENV)/bin/sonogate demo --bundle demo/bundle --out out/demo

# a second venv without torch proves the runtime never needs it
$(RUNTIME_VENV)/.installed: pyproject.toml $(LOCK_RUNTIME_DEV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) -r $(LOCK_RUNTIME_DEV)
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	touch $@

test-torchfree: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/python -m pytest -q -m torchfree

test-fast: $(VENV)/.all-installed
	$(VENV)/bin/python -m pytest -q -m "not slow"

test: $(VENV)/.all-installed
	$(VENV)/bin/python -m pytest -q
	$(MAKE) test-torchfree

# Early warning, not CI: a throwaway venv with the newest releases that pyproject.toml's ranges allow, the drift
# from the lock listed, then the whole suite. A failure here is the next fresh machine's failure once the lock moves.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(LATEST_VENV)/bin/pip install $(PIP_FLAGS) --upgrade --upgrade-strategy eager -e ".[runtime,train,dev]"
	$(LATEST_VENV)/bin/python scripts/lock_drift.py $(LOCK_ALL)
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider

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
