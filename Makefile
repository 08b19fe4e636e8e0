# Developer entry points. Everything runs inside a local virtual environment (.venv);
# a fresh clone needs nothing but python3 and access to PyPI.
#
#   make demo    set up, then run examples/quickstart.py (trains a layer, checks gradients)
#   make test    set up, then ruff check, ruff format --check, pytest, mkdocs build --strict
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
.PHONY: help venv install demo test lint format bench docs tutorials clean

help:
	@echo "make venv     create $(VENV) (with a CPU build of torch)"
	@echo "make install  editable install with the test extra"
	@echo "make demo     run examples/quickstart.py"
	@echo "make test     ruff check, ruff format --check, pytest, then make docs"
	@echo "make lint     ruff check and ruff format --check"
	@echo "make format   ruff format and ruff check --fix"
	@echo "make bench    install the bench extra (+ qpth), run run_all.py, sparse_problems.py, families.py, maros_meszaros.py"
	@echo "make docs     build the documentation (mkdocs build --strict) into site/"
	@echo "make tutorials  run the tutorials in full; refresh docs/figures and docs/outputs"
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
# The docs build comes last: a broken link or API reference fails the suite too.
test: install
	$(RUFF) check .
	$(RUFF) format --check .
	@$(VENV_PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit code 5)" >&2; fi; \
	  exit $$rc
	@$(MAKE) --no-print-directory docs

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
	$(VENV_PY) benchmarks/sparse_problems.py
	$(VENV_PY) benchmarks/families.py
	$(VENV_PY) benchmarks/maros_meszaros.py

$(DOCS_STAMP): pyproject.toml $(INSTALL_STAMP)
	$(PIP) install -e ".[test,docs]"
	@touch $@

# --strict turns every warning (a broken link, an unknown API reference) into a failure.
# The build needs no network: MathJax is loaded by the reader's browser, not at build time.
docs: install $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The tutorials' figures and printed outputs (and the quickstart's output) are committed:
# the docs build never runs them. This target regenerates them from full (not --fast)
# runs, on one thread (faster for these small problems, and steadier on a busy machine).
DOC_EXAMPLES = quickstart optnet_digits sparsemax portfolio mpc truncation constrained_least_squares

tutorials: install $(DOCS_STAMP)
	@mkdir -p docs/figures docs/outputs
	@for t in $(DOC_EXAMPLES); do \
	  echo "== examples/$$t.py"; \
	  OMP_NUM_THREADS=1 $(VENV_PY) examples/$$t.py > docs/outputs/$$t.txt || exit 1; \
	  cat docs/outputs/$$t.txt; \
	done

clean:
	rm -rf $(VENV) build dist site .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
