# The two commands a new machine needs: `make demo` (the main job, end to end, on CPU) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: venv demo test test-fast lint format bench-data bench-trainer bench-gpu bench-quality clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) $(BIN)/python -m scripts.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not integration and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

BENCH_STAMP := $(VENV)/.bench-installed
BENCH_DIR ?= .bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $(BENCH_STAMP)

# Inputs both benchmarks share: the sample corpus, a 30k WordPiece and 128-token shards (built once).
$(BENCH_DIR)/.inputs: $(STAMP)
	rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	$(BIN)/mlm-data sample-corpus $(BENCH_DIR)/corpus --workers 2
	$(BIN)/mlm-data tokenizer --input $(BENCH_DIR)/corpus --kind wordpiece --vocab-size 30000 --out $(BENCH_DIR)/tok
	$(BIN)/mlm-data build --input $(BENCH_DIR)/corpus --tokenizer $(BENCH_DIR)/tok --out $(BENCH_DIR)/shards \
		--seq-len 128 --mode full-sentences --workers 2
	touch $@

bench-data: $(BENCH_STAMP) $(BENCH_DIR)/.inputs
	$(BIN)/python bench/data_pipeline.py --corpus $(BENCH_DIR)/corpus --tokenizer $(BENCH_DIR)/tok

bench-trainer: $(BENCH_STAMP) $(BENCH_DIR)/.inputs
	$(BIN)/python bench/trainer.py --shards $(BENCH_DIR)/shards --steps 20 --skip 4

# One GPU: BERT-base seq 128 and BERT-large seq 512, bf16 and fp16, against the HF Trainer (bench/gpu.py).
# Needs a CUDA build of torch in the venv; on a machine with its own PyTorch run the script directly.
bench-gpu: $(BENCH_STAMP) $(BENCH_DIR)/.inputs
	$(BIN)/python bench/gpu.py --corpus $(BENCH_DIR)/corpus --tokenizer $(BENCH_DIR)/tok --work $(BENCH_DIR)/gpu

# Learning quality against the HF run_mlm.py recipe: its own 8k-vocabulary inputs, built once in its own
# dir (the shared inputs above are rebuilt from scratch); ~20 min on 2 cores.
QUALITY_DIR ?= .bench-quality
bench-quality: $(BENCH_STAMP)
	$(BIN)/python bench/quality.py --work $(QUALITY_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(BENCH_DIR) $(QUALITY_DIR) *.egg-info .pytest_cache .ruff_cache
