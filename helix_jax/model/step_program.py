"""The jitted step programs of `StageEngine`, shared by every engine of the same stage structure.

Owns: the traced step (merge weights, run the stage forward, sample on the last stage), the
process-wide program cache keyed by graphdef, weight treedef, logits flag, page size, paged
attention backend and XLA options, compile counting, the XLA options a stage compiles with
(`default_compiler_options`) and `slots_for_kv_budget`. Sits in the runtime step of the data
flow, under `engine.py`: the engine pads a batch and calls the program returned here.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.stages import Wrapped

from helix_jax.model.sampling import sample_tokens
from helix_jax.model.stage import UNROLL_MIN_LAYER_BYTES, KVCache, StageModel, kv_cache_bytes
from helix_jax.modelconfig import ModelConfig

# Jitted step programs are shared by every engine of the same stage structure (graphdef: config,
# layer range, layer loop), so a process that builds several identical engines compiles once.
# The trace-time side effect credits the compile to the engine calling in this thread.
# Weights travel as a flat list of arrays: flattening an nnx.State of an unrolled 40-layer stage
# cost ~0.4 ms per call, a plain list a few microseconds.
PROGRAMS: dict[tuple, Wrapped] = {}
CALLER = threading.local()


def _traced_step(
    graphdef,
    treedef,
    return_logits: bool,
    page_size: int,
    attention: str,
    weight_leaves: list,
    cache: KVCache,
    token_ids,
    hidden,
    run_start,
    positions,
    num_tokens,
    kv_index,
    temperature,
    top_k,
    top_p,
    seed,
    *,
    context_len: int,
):
    engine = getattr(CALLER, "engine", None)
    if engine is not None:
        engine._compile_count += 1  # runs only while tracing: one increment per compiled bucket
    model: StageModel = nnx.merge(graphdef, jax.tree.unflatten(treedef, weight_leaves))
    x, cache = model(
        token_ids if model.is_first else None, hidden, run_start, positions, num_tokens, kv_index, cache, context_len, page_size, attention
    )
    if not model.is_last:
        return x, cache
    last = x[jnp.arange(x.shape[0]), jnp.maximum(num_tokens - 1, 0)]  # [B, hidden]
    logits = model.logits(last)  # [B, vocab] float32
    tokens = sample_tokens(logits, temperature, top_k, top_p, seed, positions + num_tokens)
    return ((tokens, logits) if return_logits else tokens), cache


def step_program(graphdef, treedef, return_logits: bool, page_size: int, compiler_options: dict | None, attention: str) -> Wrapped:
    options = tuple(sorted((compiler_options or {}).items()))
    key = (graphdef, treedef, return_logits, page_size, attention, options)
    if key not in PROGRAMS:
        PROGRAMS[key] = jax.jit(
            functools.partial(_traced_step, graphdef, treedef, return_logits, page_size, attention),
            static_argnames=("context_len",),
            donate_argnames=("cache",),
            compiler_options=dict(options) or None,
        )
    return PROGRAMS[key]


# XLA's quickest CPU compile: optimization level 0, and the classic LLVM emitters for fusions
# instead of the MLIR fusion emitters (each of which builds its own MLIR pass pipeline)
NARROW_CPU_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def default_compiler_options(config: ModelConfig) -> dict[str, Any] | None:
    """XLA options of a stage's programs when the caller gives none (`{}` asks for XLA's
    defaults). Narrow models on the CPU (under UNROLL_MIN_LAYER_BYTES of weights per layer: the
    random models of tests and of `--emulate`, and toy checkpoints; a real LLM's layer is
    several times that) take NARROW_CPU_OPTIONS: compiling is most of their start-up, while a
    step stays a few milliseconds. A tiny-8 stage's 7 programs (2-core x86 machine, one XLA
    thread): 12.7-14.4 s of CPU to compile at XLA's defaults, 7.9 s at level 0, 3.2-3.3 s at
    level 0 without the fusion emitters; its 8-row decode step 1.7-2.6, 4.1-4.9 and 5.6-7.4 ms.
    Real models keep XLA's defaults: without the fusion emitters SmolLM2's unrolled stages
    compiled twice as long (15 layers: 19.5 -> 45 s) and its scanned last stage decoded slower."""
    if jax.default_backend() == "cpu" and config.weight_bytes_per_layer < UNROLL_MIN_LAYER_BYTES:
        return dict(NARROW_CPU_OPTIONS)
    return None


def slots_for_kv_budget(config: ModelConfig, num_layers: int, kv_budget_bytes: int, max_seq_len: int) -> int:
    """How many full-length request slots a KV memory budget holds for `num_layers` layers."""
    per_slot = kv_cache_bytes(config, num_layers, 1, max_seq_len)
    return max(0, int(kv_budget_bytes) // per_slot)
