# ntkdyn: every target but help and clean bootstraps .venv from pyproject.toml on a fresh
# machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv demo test lint bench figures figures-fast clean

help:
	@echo "make demo          predict examples/default.toml on the bundled digits (out/demo/)"
	@echo "make test          the test suite (python -m pytest -q -n 2)"
	@echo "make figures       regenerate the README figures from paper_repro/*.toml"
	@echo "make figures-fast  the figure pipeline on tiny settings (figures/fast/; run by CI)"
	@echo "make bench         the solver benchmark (benchmarks/solver.py)"
	@echo "make lint          ruff on the sources, tests, benchmarks and figure scripts"
	@echo "make venv          only bootstrap .venv from pyproject.toml"
	@echo "make clean         remove .venv, out/, caches and generated figures/fast, figures/cache"
	@echo "(every target but help and clean bootstraps .venv first)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ntkdyn predict examples/default.toml --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check ntkdyn tests benchmarks validate figures paper_repro

figures: $(STAMP)
	$(PY) figures/make_figures.py

figures-fast: $(STAMP)
	$(PY) figures/make_figures.py --fast

bench: $(STAMP)
	$(PY) benchmarks/solver.py

clean:
	rm -rf $(VENV) out .pytest_cache figures/cache figures/fast figures/summary.json
