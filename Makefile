# ntkdyn: every target bootstraps .venv from pyproject.toml on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bench figures figures-fast clean

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
	rm -rf $(VENV) out .pytest_cache
