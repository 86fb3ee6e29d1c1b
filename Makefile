# Two commands do all set-up: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
MODEL ?= models/face
PORT ?= 50051
PB_DIR := sketchserve/pb
# Our contract, and the Open Inference Protocol (vendored, proto/inference/README.md) with Triton's repository index.
PROTOS := proto/sketch/v1/sketch.proto proto/inference/open_inference_grpc.proto proto/inference/repository_index.proto
PB_OUT := $(patsubst proto/%.proto,$(PB_DIR)/%_pb2.py,$(PROTOS))
# The source the linters and the type checker read: the core and the three layers (import path = file path).
SOURCE := sketchserve client/sketchserve server/sketchserve training/sketchserve
# The four roots of the `sketchserve` namespace package.
ROOTS := .:client:server:training
# Where the real data the benchmarks read lives.
DATA ?= ../shared/data

.PHONY: all install proto test test-quick lint serve bench figures clean

all: install

# The venv is (re)built when the project's dependencies change. flock makes a
# second `make` that starts meanwhile wait for the first instead of racing it
# inside pip; the stamp is checked again once the lock is held.
$(BIN)/.installed: pyproject.toml constraints.txt
	flock .install.lock $(MAKE) --no-print-directory venv-locked

.PHONY: venv-locked
venv-locked:
	@if [ ! -f $(BIN)/.installed ] || [ pyproject.toml -nt $(BIN)/.installed ] || [ constraints.txt -nt $(BIN)/.installed ]; then \
		$(PYTHON) -m venv $(VENV) && \
		$(PIP) install --quiet --upgrade pip && \
		$(PIP) install --quiet -c constraints.txt -e '.[server,train,dev]' && \
		touch $(BIN)/.installed; \
	fi

install: $(BIN)/.installed proto

# Generated protobuf code: this one command, at build time; gitignored, never edited.
# The path mapping makes the generated modules import as sketchserve.pb.sketch.v1 and sketchserve.pb.inference.
$(PB_DIR)/%_pb2.py: proto/%.proto $(BIN)/.installed
	$(BIN)/python -m grpc_tools.protoc --proto_path=$(PB_DIR)=proto \
		--python_out=. --grpc_python_out=. --pyi_out=. $<

proto: $(PB_OUT)

# ruff (lint + format check), mypy, the import contracts (pyproject.toml [tool.importlinter]), hadolint.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=$(ROOTS) $(BIN)/mypy $(SOURCE)
	PYTHONPATH=$(ROOTS) $(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

test: lint
	$(BIN)/python -m pytest -q

# A developer's quick loop: everything but the tests marked slow.
test-quick: install
	$(BIN)/python -m pytest -q -m "not slow"

serve: install
	$(BIN)/sketchserve serve --model $(MODEL) --port $(PORT)

# The benchmarks that run on this machine, each printing its table (docs/benchmarks.md says what each measures).
bench: install
	$(BIN)/python bench/bench_preprocess.py --data $(DATA)
	$(BIN)/python bench/bench_serving.py --model $(MODEL)
	$(BIN)/python bench/bench_replicas.py --model $(MODEL)
	$(BIN)/python bench/bench_clustering.py --model $(MODEL)

# The published tables, rendered from bench/results/*.json (tests/test_figures.py fails when they drift).
figures: install
	$(BIN)/python bench/render.py

clean:
	rm -rf $(VENV) $(PB_DIR)/sketch $(PB_DIR)/inference build *.egg-info .install.lock
