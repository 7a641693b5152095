# Two commands from a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: help install train test test-all test-gpu lint format bench tensorboard clean

help:
	@echo "make train      set up .venv and run the default experiment on CPU (minutes)"
	@echo "make test       set up .venv and run the test suite (< 10 min)"
	@echo "make test-all   also run the slow tests"
	@echo "make bench      run the benchmarks in benchmarks/"
	@echo "make lint       ruff check"
	@echo "make tensorboard  open TensorBoard on logs/"

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/lmsleep fit experiment=rule110_transformer

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/ops.py
	$(PY) benchmarks/wake_latency.py
	$(PY) benchmarks/data_generation.py

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf logs multirun outputs .pytest_cache
