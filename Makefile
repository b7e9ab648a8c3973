# `make demo`: set up .venv with the package alone and run the quick comparison; `make test`: add the test and
# benchmark extras and run the CI tests; `make docs`: add the docs extra and build the site into site/;
# `make dist`: add the dev extra, build the sdist and wheel into dist/ and check them with twine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all lint bench gpu-check docs dist

# the package and its dependencies only: what `make demo` needs
$(VENV)/.core-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

# the test extra, the peers (zuko, pyro, normflows, glasflow) and sbi: tests/test_experiments.py runs the benchmark,
# whose adapters for the peers are only exercised where they are installed
setup: $(VENV)/.installed

$(VENV)/.installed: $(VENV)/.core-installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,bench,sbi]"
	touch $@

demo: $(VENV)/.core-installed
	$(PY) experiments/compare_bases.py --quick

test: setup
	$(PY) -m pytest -m "not slow and not gpu"

test-all: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports --no-cache

bench: setup
	$(PY) benchmarks/bench_mixture.py

# the checks that need a GPU (tests marked gpu, nccl DDP, the CUDA benchmark rows): scripts/gpu_check.sh
gpu-check:
	bash scripts/gpu_check.sh run

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $@

# an isolated build: pip fetches setuptools (build-system.requires) from the configured index
dist: $(VENV)/.dev-installed
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

$(VENV)/.dev-installed: $(VENV)/.core-installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@
