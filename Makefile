# Two commands from a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: help install install-cuda train test test-all test-gpu test-kernels lint format bench notebooks tensorboard clean

help:
	@echo "make train      set up .venv and run the default experiment on CPU (minutes)"
	@echo "make test       set up .venv and run the test suite (< 10 min)"
	@echo "make test-all   also run the slow tests"
	@echo "make bench      run the benchmarks and write benchmarks/RESULTS.md (BENCH_AGAINST=rev compares)"
	@echo "make test-gpu   on a CUDA machine: install the cuda extra (fla, mamba-ssm's Triton kernels), run the GPU tests"
	@echo "make test-kernels  run the real GPU kernels on CPU under the Triton interpreter (minutes)"
	@echo "make lint       ruff check and ruff format --check (what CI runs)"
	@echo "make format     ruff format"
	@echo "make notebooks  re-execute notebooks/*.ipynb in place (they are committed with their outputs)"
	@echo "make tensorboard  open TensorBoard on logs/"

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned on this machine: pyproject.toml asks only torch>=2.9, and a bare torch requirement
# would pull a multi-GB CUDA build.
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

# The kernel packages on a GPU machine (docs/gpu.md): flash-linear-attention from its wheel, mamba-ssm from its
# sdist against the installed torch, without compiling its CUDA extension (lmsleep calls only its Triton SSD
# kernels): seconds instead of a long nvcc build.
$(VENV)/.installed-cuda: $(STAMP)
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
	  $(PY) -m pip install --quiet --no-build-isolation -e ".[dev,cuda]"
	@touch $@

install-cuda: $(VENV)/.installed-cuda

# Needs an NVIDIA GPU with its driver and a CUDA build of torch (PyPI's default Linux wheel of $(TORCH) is
# one); runs the tests marked gpu. scripts/gpu_check.sh runs it with the rest of the first GPU hour.
test-gpu: $(VENV)/.installed-cuda
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# The real fla and mamba-ssm Triton kernels on CPU, under the Triton interpreter (tests/kernels, docs/gpu.md).
# tests/kernels/interpreter_patches.py reaches into these packages' internals: keep the pins in step with it.
# mamba-ssm from its sdist without its CUDA extension (lmsleep uses only its Triton SSD kernels).
KERNEL_PINS := fla-core==0.6.0 triton==3.8.0
MAMBA_PIN   := mamba-ssm==2.3.2.post1
$(VENV)/.installed-kernels: $(STAMP) Makefile
	$(PY) -m pip install --quiet $(KERNEL_PINS) einops packaging setuptools  # what the sdist build needs
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
	  $(PY) -m pip install --quiet --no-build-isolation --no-deps $(MAMBA_PIN)
	@touch $@

test-kernels: $(VENV)/.installed-kernels
	$(PY) -m pytest -q -m kernels tests/kernels $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks scripts

# BENCH_AGAINST=<git revision> adds a side-by-side comparison of the training step with that revision.
BENCH_AGAINST ?=
bench: $(STAMP)
	$(PY) -m benchmarks.ops
	$(PY) -m benchmarks.wake_latency
	$(PY) -m benchmarks.data_generation
	$(PY) -m benchmarks.train_step --experiment rule110_sleep --passes 1 2 $(if $(BENCH_AGAINST),--against $(BENCH_AGAINST) --losses 50)
	$(PY) -m benchmarks.train_step --experiment depo_sleep --passes 2 $(if $(BENCH_AGAINST),--against $(BENCH_AGAINST) --losses 50)
	$(PY) -m benchmarks.train_step --experiment rule110_sleep --passes 1 2 --repeats 3 --precision bf16-mixed --against-precision 32-true --out benchmarks/results/train_step_rule110_sleep_bf16.json
	$(PY) -m benchmarks.step_floor --experiment rule110_sleep --passes 1 2 --repeats 3 $(if $(BENCH_AGAINST),--against $(BENCH_AGAINST))
	$(PY) -m benchmarks.step_floor --experiment depo_sleep --passes 2 --repeats 3 $(if $(BENCH_AGAINST),--against $(BENCH_AGAINST))
	$(PY) -m benchmarks.sleep_throughput
	# one thread: with two, a step on a 2-core machine that other work shares can take 50x its time (benchmarks/compile.py)
	$(PY) -m benchmarks.compile --experiment rule110_sleep --passes 1 2 --targets mlp,ssm mlp attn ssm --threads 1
	$(PY) -m benchmarks.write_results

notebooks: $(STAMP)
	$(PY) -m pip install --quiet -e ".[notebooks]"
	$(PY) scripts/run_notebooks.py notebooks/*.ipynb

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf logs multirun outputs .pytest_cache
