# Two commands do all set-up: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
MODEL ?= models/face
PORT ?= 50051
PB_DIR := sketchserve/pb
PROTO := proto/sketch/v1/sketch.proto
PB_OUT := $(PB_DIR)/sketch/v1/sketch_pb2.py

.PHONY: all install proto test serve lint bench clean

all: install

# The venv is (re)built when the project's dependencies change.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[server,train,dev]'
	touch $@

install: $(BIN)/.installed proto

# Generated protobuf code: this one command, at build time; gitignored, never edited.
# The path mapping makes the generated modules import as sketchserve.pb.sketch.v1.
$(PB_OUT): $(PROTO) $(BIN)/.installed
	$(BIN)/python -m grpc_tools.protoc --proto_path=$(PB_DIR)=proto \
		--python_out=. --grpc_python_out=. --pyi_out=. $(PROTO)

proto: $(PB_OUT)

test: install
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q

serve: install
	$(BIN)/sketchserve serve --model $(MODEL) --port $(PORT)

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(PB_DIR)/sketch build *.egg-info
