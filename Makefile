# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-methods install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# FALF on LeNet-5 trained on scikit-learn's digits: the before/after table (accuracy, MACs, params, latency).
demo: $(STAMP)
	$(PY) examples/lenet5_digits.py

# --dist loadgroup: the four >250 M-parameter zoo models run on one worker, one at a time.
# --max-worker-restart 0: a crashed worker ends the run at once (with loadgroup, xdist waits forever).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --max-worker-restart 0 -q

# Torch-Pruning is the peer the benchmarks measure against: a bench extra, never a dependency.
bench: $(STAMP)
	$(PY) -c "import torch_pruning" 2>/dev/null || $(PY) -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/zoo.py --shard 1/2 & $(PY) benchmarks/zoo.py --shard 2/2; wait
	$(PY) benchmarks/zoo.py --merge
	cd benchmarks && ../$(PY) hetconv.py macs latency train
	$(PY) benchmarks/report.py

# The training benchmarks (hours on 2 CPU cores; quality.py's base weights in benchmarks/weights, the rest cached in .bench-cache).
bench-methods: $(STAMP)
	$(PY) -c "import torch_pruning, modelopt" 2>/dev/null || $(PY) -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/quality.py --report
	$(PY) benchmarks/criteria.py
	$(PY) benchmarks/ablation_falf.py --cache .bench-cache
	$(PY) benchmarks/cfp_ablation.py
	$(PY) benchmarks/methods.py --cache .bench-cache

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .bench-cache
