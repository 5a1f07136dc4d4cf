# Set-up and checks. `make test` is the README's test command and what CI runs (.ci/run).
#   make install   .venv with this package (editable) and its eval/plots/dev extras
#   make test      the whole test suite on CPU (gloo); PYTEST_ARGS="tests/models -k tensor" for part
#   make demo      tiny nGPT vs GPT-2 run end to end on CPU (tools/demo.py)
#   make lint      ruff
# PYTHON and VENV are overridable: `make test VENV=/path/to/env` uses an existing environment.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?= tests
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megatron-ngpt-installed

.PHONY: install test demo lint

install: $(STAMP)

# torch first, and only where the environment has none: a plain `pip install torch` (or the
# unpinned torch requirement of setup.py) would pull a multi-GB CUDA build on CPU machines, while
# GPU users keep the CUDA build they already have.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[eval,plots,dev]"
	touch $@

# pytest exits 5 when it collects no test: any non-zero status fails the target.
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py

lint: install
	$(PY) -m ruff check .
