# The two commands a new machine needs: `make demo` (the main job, end to end, on CPU) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: venv demo test test-fast lint format bench-data bench-trainer clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) $(BIN)/python -m pretrain.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not integration and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench-data: $(STAMP)
	$(BIN)/python bench/data_pipeline.py

bench-trainer: $(STAMP)
	$(BIN)/python bench/trainer.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info .pytest_cache .ruff_cache
