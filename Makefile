# helix-jax developer targets. `make install` builds .venv from scratch; everything else uses it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export JAX_PLATFORMS ?= cpu

.PHONY: install test lint format demo bench bench-plan bench-runtime bench-serve bench-sim bench-paged bench-gpu bench-timing bench-soak bench-long-prompt clean

# What serving needs (no torch), then the default model into the model cache (sha256-checked).
install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	$(BIN)/helix-jax models pull smollm2-135m

# The test extras (torch CPU from local disk first, so nothing pulls a CUDA build), once per venv.
$(VENV)/.test-extras: pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The lint (ruff check, ruff format, mypy) first: CI runs exactly this target. Two xdist workers, one per core; each
# test file runs whole on one of them, the heaviest first (tests/conftest.py; --no-loadscope-reorder keeps that order).
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not benchmark" tests

lint: $(VENV)/.test-extras
	$(BIN)/ruff check helix_jax solver cli tests
	$(BIN)/ruff format --check helix_jax solver cli tests
	$(BIN)/mypy

# Rewrite the tree in the house format (what `make lint` checks).
format:
	$(BIN)/ruff format helix_jax solver cli tests
	$(BIN)/ruff check --fix helix_jax solver cli tests

bench: bench-plan bench-runtime bench-serve bench-sim bench-timing

# Issue 19's reliability figure: 10 minutes of streaming load, poison requests and a SIGKILL/SIGSTOP every 30 s.
bench-soak:
	$(BIN)/python -m helix_jax.cli.soak_bench --out soak.json

# Issue 18: decoders' TPOT p50/p99 before and while a 2000-token prompt prefills (chunked), default deployment.
bench-long-prompt:
	$(BIN)/python -m helix_jax.cli.long_prompt_bench --out long_prompt.json

# Checks against the wall clock (emulated latencies = the cost model's arithmetic), kept out of `make test`.
bench-timing: $(VENV)/.test-extras
	$(BIN)/python -m pytest -m benchmark tests -v

bench-plan:
	$(BIN)/python -m helix_jax.solver.bench_plan

bench-runtime:
	$(BIN)/python -m helix_jax.model.bench_runtime
	$(BIN)/python -m helix_jax.cli.model_bench

bench-paged:
	$(BIN)/python -m helix_jax.model.bench_paged

# On a machine with a GPU: profile 70B-shaped bf16 layers, then decode steps against the bandwidth floor for
# paged (gather), paged (Pallas kernel) and contiguous KV. Needs only JAX and flax: on a bare GPU host run
# `PYTHONPATH=. python3 -m helix_jax.model.gpu_checks --out DIR` from a checkout.
bench-gpu:
	$(BIN)/python -m helix_jax.model.gpu_checks --out gpu-checks

bench-sim:
	$(BIN)/python -m helix_jax.cli.sim_bench

bench-serve:
	$(BIN)/python -m helix_jax.cli.curve_bench
	$(BIN)/python -m helix_jax.cli.ready_bench
	$(BIN)/python -m helix_jax.cli.serve_bench --time-scale 5 --warmup 30 --window 30 --concurrency 1500

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
