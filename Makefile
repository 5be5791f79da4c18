# Two commands do all the set-up: `make run` and `make test`.
# Each creates .venv with Python >= 3.11 if missing and installs what it needs.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPO ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 8001

.PHONY: run test lint bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "inferd needs Python >= 3.11 on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is pinned first: on this platform any other spec pulls multi-GB CUDA builds.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# Core ML export of ONNX-only packages; --no-deps because its torchvision requirement breaks beside CPU torch.
	$(BIN)/pip install --quiet --no-deps onnx2torch==1.5.15
	touch $(STAMP)

# The default models: an image classifier and a text embedder, both built by one `inferd prepare`.
MODELS := $(REPO)/efficientnet-lite0/manifest.json $(REPO)/minilm-l6/manifest.json

$(MODELS) &: $(STAMP)
	$(BIN)/inferd prepare $(REPO)

run: $(STAMP) $(MODELS)
	$(BIN)/inferd serve $(REPO) --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check inferd tests benchmarks
	$(BIN)/mypy inferd benchmarks

bench: $(STAMP) $(MODELS)
	mkdir -p benchmarks/results
	$(BIN)/inferd bench $(REPO)/efficientnet-lite0 --json benchmarks/results/engine-efficientnet-lite0.json
	$(BIN)/inferd bench $(REPO)/minilm-l6 --json benchmarks/results/engine-minilm-l6.json

clean:
	rm -rf $(VENV) $(REPO) .pytest_cache .mypy_cache .ruff_cache
