# Two commands do all set-up on a fresh machine:
#   make demo   - venv + install + the main experiment on the embedded default (digits)
#   make test   - venv + install + the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Pinned as they install on this machine (x86_64, from local disk).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev,ray]' $(TORCH_PINS)
	touch $(STAMP)

demo: venv
	$(BIN)/qubo-nn experiment --out runs/digits-default

test: venv
	$(BIN)/python -m pytest -q

# every benchmark in turn (hours on a 2-core CPU; each writes results/bench_<name>.json and .txt)
bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
