# Everything a fresh machine needs, from two entry points: `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(shell find protos -name '*.proto')
SITE := $(VENV)/lib/python3.11/site-packages
# In the descriptor set too: the transcoder must know ErrorInfo to print error details.
RPC_PROTOS := google/rpc/status.proto google/rpc/error_details.proto
GEN := services/llmops/v1

.PHONY: up test bench bench-quick proto lint breaking stubs clean install llama-check

## up: install, generate, start every service and Envoy in the foreground (Ctrl-C stops all)
up: install llama-check proto
	$(PY) deploy/scripts/run_local.py

## test: the whole suite (unit, in-process gRPC on PostgreSQL and SQLite, through Envoy)
test: install llama-check proto
	$(PY) -m pytest $(PYTEST_ARGS)

## bench: start the platform and its baselines, measure every scenario, print the table (docs/performance.md)
bench: install llama-check proto $(VENV)/.bench-installed
	$(PY) -m bench.peer
	$(PY) -m bench $(BENCH_ARGS)

## bench-quick: every scenario for a second each (CI: it fails only if a scenario gave no numbers)
bench-quick: install llama-check proto $(VENV)/.bench-installed
	$(PY) -m bench.peer
	$(PY) -m bench --quick --out build/bench-quick

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet '.[bench]'
	touch $@

# llama-cpp-python first, from our portable wheel: otherwise pip builds it -march=native.
$(VENV)/.installed: pyproject.toml deploy/scripts/llama_build.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) deploy/scripts/llama_build.py install
	$(PY) -m pip install --quiet '.[test]'
	touch $@

## llama-check: llama.cpp generates a multi-token prompt on this CPU (a wheel from elsewhere may not)
llama-check: $(VENV)/.installed
	$(PY) deploy/scripts/llama_build.py check

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

## proto: Python code and the descriptor set Envoy needs, then buf lint
proto: $(GEN)/.stamp build/api_descriptor.pb lint

build/proto-deps/.stamp: $(VENV)/.installed
	mkdir -p build/proto-deps/google/api build/proto-deps/google/rpc
	cp $(SITE)/google/api/annotations.proto $(SITE)/google/api/http.proto \
	   $(SITE)/google/api/field_behavior.proto $(SITE)/google/api/httpbody.proto build/proto-deps/google/api/
	cp $(addprefix $(SITE)/,$(RPC_PROTOS)) build/proto-deps/google/rpc/
	touch $@

$(GEN)/.stamp: $(PROTO_SRC) build/proto-deps/.stamp
	rm -rf services/llmops && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos -Ibuild/proto-deps \
	  --python_out=services --pyi_out=services --grpc_python_out=services $(PROTO_SRC)
	touch services/llmops/__init__.py $(GEN)/__init__.py $@

build/api_descriptor.pb: $(PROTO_SRC) build/proto-deps/.stamp
	$(PY) -m grpc_tools.protoc -Iprotos -Ibuild/proto-deps --include_imports \
	  --include_source_info --descriptor_set_out=$@ $(PROTO_SRC) $(RPC_PROTOS)

lint: node_modules/.installed build/proto-deps/.stamp
	node_modules/.bin/buf lint

## breaking: buf breaking against main
breaking: node_modules/.installed build/proto-deps/.stamp
	node_modules/.bin/buf breaking --against '.git#branch=main'

## stubs: TypeScript stubs for other clients (buf generate with ts-proto)
stubs: node_modules/.installed build/proto-deps/.stamp
	node_modules/.bin/buf generate protos

clean:
	rm -rf build services/llmops var
