# Two commands on a fresh machine: `make demo` (set up, pretrain on the bundled corpus,
# evaluate, export to Hugging Face) and `make test` (set up, run the test suite).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DEMO    ?= runs/demo
CORPUS  := llmcore/data/corpus/jargon-4.4.7.txt.gz
# torch first, pinned to the CPU build when no GPU is present, so `torch>=2.4` in pyproject
# resolves to it instead of downloading a multi-GB CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: setup demo test test-all bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/llmcore tokenizer train --input $(CORPUS) --vocab-size 4096 --out $(DEMO)/tokenizer --overwrite
	$(BIN)/llmcore data prepare --input $(CORPUS) --tokenizer $(DEMO)/tokenizer --out $(DEMO)/data \
		--val-fraction 0.02 --overwrite
	$(BIN)/llmcore train --config recipes/configs/demo.yaml data.path=$(DEMO)/data train.out_dir=$(DEMO)/model
	$(BIN)/llmcore eval --checkpoint $(DEMO)/model --data $(DEMO)/data --seq-len 256
	$(BIN)/llmcore generate --checkpoint $(DEMO)/model --prompt "A hacker is" --max-new-tokens 40
	$(BIN)/llmcore export-hf --checkpoint $(DEMO)/model --out $(DEMO)/hf --overwrite
	@echo "demo done: checkpoint $(DEMO)/model, Hugging Face folder $(DEMO)/hf"

# Default run: everything but @slow (one multi-process and the interpreted-kernel tests included).
test: setup
	$(BIN)/python -m pytest -m "not slow and not cuda" -q

test-all: setup
	$(BIN)/python -m pip install -q -e ".[eval]"
	$(BIN)/python -m pytest -m "not cuda" -q

bench: setup
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.kernels --op linear_cross_entropy

clean:
	rm -rf $(DEMO) .pytest_cache
