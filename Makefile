# Developer entry points. Everything runs inside a local virtual environment (.venv);
# a fresh clone needs nothing but python3 and access to PyPI.
#
#   make demo    set up, then run examples/quickstart.py (trains a layer, checks gradients)
#   make test    set up, then ruff check, ruff format --check, pytest
#   make help    list the targets

PYTHON ?= python3
VENV = .venv
VENV_PY = $(VENV)/bin/python
PIP = $(VENV_PY) -m pip
RUFF = $(VENV)/bin/ruff
PYTEST_ARGS ?=
# The CPU build of torch that this machine keeps on disk; a bare `torch` requirement would
# pull a multi-GB CUDA build from PyPI instead.
TORCH_CPU_VERSION ?= 2.13.0

INSTALL_STAMP = $(VENV)/.install-stamp
BENCH_STAMP = $(VENV)/.bench-stamp
DOCS_STAMP = $(VENV)/.docs-stamp

.DEFAULT_GOAL := help
.PHONY: help venv install demo test lint format bench docs clean

help:
	@echo "make venv     create $(VENV) (with a CPU build of torch)"
	@echo "make install  editable install with the test extra"
	@echo "make demo     run examples/quickstart.py"
	@echo "make test     ruff check, ruff format --check, pytest"
	@echo "make lint     ruff check and ruff format --check"
	@echo "make format   ruff format and ruff check --fix"
	@echo "make bench    install the bench extra (+ qpth) and run benchmarks/run_all.py"
	@echo "make docs     build the documentation (mkdocs build --strict)"
	@echo "make clean    remove $(VENV), caches and build outputs"

# Create the venv if it is missing, then make sure torch is importable, installing the CPU
# wheel first so that `pip install -e .` later finds its torch requirement satisfied.
venv:
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV_PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" \
	  || $(PIP) install "torch==$(TORCH_CPU_VERSION)" \
	  || $(PIP) install "torch>=2.1"

# Re-install only when pyproject.toml changes (or the venv was recreated).
$(INSTALL_STAMP): pyproject.toml | venv
	$(PIP) install -e ".[test]"
	@touch $@

install: venv $(INSTALL_STAMP)

demo: install
	$(VENV_PY) examples/quickstart.py

lint: install
	$(RUFF) check .
	$(RUFF) format --check .

format: install
	$(RUFF) format .
	$(RUFF) check --fix .

# pytest exits 5 when it collected no tests: that is a failure here, and says so.
test: install
	$(RUFF) check .
	$(RUFF) format --check .
	@$(VENV_PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit code 5)" >&2; fi; \
	  exit $$rc

# qpth's metadata pins numpy<2, so it is installed without its dependencies (it needs
# only torch and numpy at run time) and never through an extra.
$(BENCH_STAMP): pyproject.toml $(INSTALL_STAMP)
	$(PIP) install -e ".[test,bench]"
	$(PIP) install --no-deps qpth
	@touch $@

bench: install $(BENCH_STAMP)
	@if [ -f benchmarks/run_all.py ]; then \
	  $(VENV_PY) benchmarks/run_all.py; \
	else \
	  echo "benchmarks/run_all.py does not exist yet: nothing to run"; \
	fi

$(DOCS_STAMP): pyproject.toml $(INSTALL_STAMP)
	$(PIP) install -e ".[test,docs]"
	@touch $@

docs: install $(DOCS_STAMP)
	@if [ -f mkdocs.yml ]; then \
	  $(VENV)/bin/mkdocs build --strict; \
	else \
	  echo "mkdocs.yml does not exist yet: nothing to build"; \
	fi

clean:
	rm -rf $(VENV) build dist site .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
