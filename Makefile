# agentmesh: every target installs what it needs, and a second call with nothing changed installs nothing.
# `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF := .tools/buf/node_modules/.bin/buf
PROTOS := $(shell find protos/agentmesh -name '*.proto' | sort)
# Vendored contracts, each under its own include root so its file names are upstream's
# (protos/third_party/*/README.md): in the descriptor set only, never generated as Python.
GOOGLEAPIS := protos/third_party/googleapis
GOOGLEAPIS_PROTOS := $(shell find $(GOOGLEAPIS) -name '*.proto' | sort)
# In the descriptor set too, so Envoy's transcoder can render AIP-193 error details as JSON.
RPC_PROTOS := google/rpc/status.proto google/rpc/error_details.proto
A2A_PROTO := protos/third_party/a2a/a2a.proto
SITE := $(VENV)/lib/python3.11/site-packages
PYTEST_ARGS ?=
# Processes `make test` spreads the suite over, a test file to each at a time (pytest-xdist;
# 0 runs it in this one). Two on CI's two cores: most tests wait on servers they start.
TEST_WORKERS ?= 2
# The corpus sizes `make bench` grows the RAG replicas through (the last is the largest; the issue's
# 100,000 takes minutes once a change costs what it should, hours where it does not).
RAG_GROWTH_SIZES ?= 1000,10000

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# --- set-up -------------------------------------------------------------------------------

$(VENV)/.installed: pyproject.toml tools/requirements.py
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) tools/requirements.py dev dense > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt
	# The repo root (hand-written packages) and gen/ (generated code) on the venv's path.
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/gen" > $(SITE)/agentmesh-paths.pth
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create the venv and install the pinned packages from pyproject.toml

$(BUF):
	command -v npm >/dev/null || { apt-get update && apt-get install -y --no-install-recommends npm; }
	npm install --silent --no-audit --no-fund --prefix .tools/buf @bufbuild/buf@$(BUF_VERSION)

# A Node gRPC client for the cross-language test (tests/services/a2a/node/), installed on first use.
NODE_GRPC := .tools/node-grpc/node_modules/@grpc/grpc-js/package.json
$(NODE_GRPC):
	command -v npm >/dev/null || { apt-get update && apt-get install -y --no-install-recommends npm; }
	npm install --silent --no-audit --no-fund --prefix .tools/node-grpc @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1

.PHONY: node-deps
node-deps: $(NODE_GRPC) ## the Node gRPC packages the cross-language A2A test uses (installed only when missing)

.PHONY: run-deps
run-deps: ## the Debian packages `make run` needs: prometheus for the console, postgresql-15 with STORE=postgres (installed only when missing)
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	$(if $(filter postgres,$(STORE)),[ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$$missing postgresql-15";) \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y --no-install-recommends $$missing; fi

.PHONY: debian-deps
debian-deps: ## Debian packages the tests use (installed only when missing)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	[ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$$missing postgresql-15"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y --no-install-recommends $$missing; fi

# --- code generation ----------------------------------------------------------------------

gen/.stamp: $(PROTOS) $(GOOGLEAPIS_PROTOS) $(A2A_PROTO) $(VENV)/.installed
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos -I$(GOOGLEAPIS) \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen \
	  $(PROTOS)
	# One descriptor set for Envoy's transcoder, grpcurl and the gateway's reflection.
	$(PY) -m grpc_tools.protoc -Iprotos -I$(GOOGLEAPIS) -I$(dir $(A2A_PROTO)) --include_imports --include_source_info \
	  --descriptor_set_out=gen/agentmesh.pb $(PROTOS) $(RPC_PROTOS) $(notdir $(A2A_PROTO))
	find gen/agentmesh -type d -exec touch {}/__init__.py \;
	touch gen/agentmesh/py.typed gen/.stamp

.PHONY: gen
gen: gen/.stamp ## generate Python code, type stubs and the descriptor set from protos/ into gen/

# --- checks -------------------------------------------------------------------------------

.PHONY: lint
lint: gen $(BUF) ## ruff, mypy --strict, the import layers (pyproject's [tool.importlinter]), buf lint, and the mesh configs against their policy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(BUF) lint
	$(PY) -m mesh check

.PHONY: screenshots
screenshots: gen debian-deps ## the README's console screenshots (docs/images/), from the browser tests over a running system
	AGENTMESH_SCREENSHOTS_DIR=docs/images $(PY) -m pytest tests/console/test_browser.py -q

.PHONY: test
test: gen debian-deps node-deps lint ## lint, then the whole test suite
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

.PHONY: fmt
fmt: venv ## format and auto-fix the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# --- running ------------------------------------------------------------------------------

# STORE=postgres keeps every service's state in one local PostgreSQL in var/postgres
# (tools/local_store.py); run-deps installs the Debian package first when missing.
RUN_ENV := $(if $(STORE),AGENTMESH_LOCAL_STORE=$(STORE) )

.PHONY: run
run: gen run-deps ## run the whole system on loopback with the console on :8080 (Ctrl-C stops it); MESH=envoy: behind Envoy with mTLS; STORE=postgres: on a local PostgreSQL
ifeq ($(MESH),envoy)
	$(PY) -m mesh certs --if-missing
	$(RUN_ENV)$(PY) -m tools.mesh_launcher
else
	$(RUN_ENV)$(PY) -m tools.launcher
endif

# --- mesh ---------------------------------------------------------------------------------

.PHONY: certs
certs: venv ## a fresh dev CA and one SPIFFE certificate per mesh identity in certs/ (gitignored)
	$(PY) -m mesh certs

.PHONY: mesh-render
mesh-render: gen ## render envoy/ and istio/ from mesh/policy.yaml (commit the result)
	$(PY) -m mesh render

.PHONY: mesh-check
mesh-check: gen ## fail if envoy/ or istio/ drifted from the policy, or the policy contradicts the protos
	$(PY) -m mesh check

.PHONY: bench
bench: gen debian-deps ## what each part of the mesh costs (h2load + grpc.aio load on loopback), the agent's write path and RAG growth (~25 min): bench/results/, docs/benchmarks.md
	$(PY) -m bench $(BENCH_ARGS)
	# CreateRun's transaction on SQLite and PostgreSQL (docs/database.md): bench/results/run_store.json
	$(PY) -m bench.run_store
	# The chain's own work per call in instructions, by concern (callgrind; ~2 min): bench/results/instructions.json
	$(PY) -m bench.instructions
	# The agent's write path with PostgreSQL a hop away, 0 and 1 ms, 1 and 2 agents and serve+execute apart (~2 min): bench/results/write_path.{json,md}
	$(PY) -m bench.write_path
	# RAG as the corpus grows, two replicas (RAG_GROWTH_SIZES): bench/results/rag_growth.{json,md}
	$(PY) -m bench.rag_growth --sizes $(RAG_GROWTH_SIZES)

.PHONY: eval
eval: gen ## retrieval quality: recall@5 and MRR@10 for BM25, dense and hybrid (eval/rag/results.{json,md}, docs/rag.md)
	$(PY) -m eval.rag

.PHONY: clean
clean: ## remove generated code, venv and local data
	rm -rf gen $(VENV) .tools var .pytest_cache .mypy_cache .ruff_cache
