# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install dev demo test lint ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .

dev: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"

demo: install
	$(BIN)/beliefloop simulate --dataset digits --rounds 10 --k 10 --acquisition bald --workspace workspace

test: dev
	$(BIN)/python -m pytest

lint: dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

ui: install
	$(BIN)/beliefloop ui --workspace workspace

clean:
	rm -rf workspace .pytest_cache
