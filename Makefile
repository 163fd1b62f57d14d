# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/falf-fx prune falf_fx.models:resnet20 --input-shape 1,3,32,32 --ratio 0.5 --out slim_demo.pt

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# Torch-Pruning is the peer the benchmarks measure against: a bench extra, never a dependency.
bench: $(STAMP)
	$(PY) -c "import torch_pruning" 2>/dev/null || $(PY) -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/zoo.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis slim_demo.pt
