# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

# laplace-torch, the reference of the marglik test (tests/bayes_models/laplace/test_marglik.py). Its requirements
# name torchvision, which would replace the pinned torch with a CUDA build, so it and what its KFAC / marglik path
# imports are installed without dependencies. asdfghjkl 0.1a4 provides the `asdl` module laplace-torch imports (the
# PyPI package called `asdl` is an unrelated project).
REFERENCE := laplace-torch==0.3 asdfghjkl==0.1a4 backpack-for-pytorch==1.7.1 curvlinops-for-pytorch==3.0.1 \
	torchmetrics==1.9.0 lightning-utilities==0.15.3 opt-einsum==3.4.0 einops==0.8.2 einconv==0.1.0 unfoldNd==0.2.3 \
	linear_operator==0.6.1

.PHONY: install dev reference demo test lint ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The project's own modules compiled once: an editable install leaves that to the first import, which cannot keep the
# result where PYTHONDONTWRITEBYTECODE is set (as on this CI), so every process compiled them again (0.5 s each).
COMPILE := $(BIN)/python -m compileall -q flows bayes_models acquisition data learner representation

install: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	$(COMPILE)

dev: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(COMPILE)

reference: dev
	$(BIN)/pip install --quiet --no-deps $(REFERENCE)
	$(BIN)/python -c "import laplace, torch; print('laplace-torch', laplace.__name__, 'with torch', torch.__version__)"

demo: install
	$(BIN)/beliefloop simulate --dataset digits --rounds 10 --k 10 --workspace workspace

# Two pytest workers, a test file each at a time: most of the suite waits on servers, browsers and CLI processes,
# so two workers halve its wall time on 2 cores (measured: 748 s vs 1,375 s). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

ui: install
	$(BIN)/beliefloop ui --workspace workspace

clean:
	rm -rf workspace .pytest_cache
