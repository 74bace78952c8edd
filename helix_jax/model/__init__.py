"""Flax LLaMA-family model runtime: layer-range stages, KV cache, sampling, checkpoints.

Public API (implementation in the private-by-convention modules of this package):
  StageEngine, StepInput, StepOutput, SamplingParams  - the compute half of a worker
  StageWeights, load_stage_weights, random_stage_weights - weights of a layer range
  generate_local, load_tokenizer                          - whole-model generation on one device
  slots_for_kv_budget                                     - KV sizing from a memory budget
The names are resolved lazily (PEP 562), so importing a jax-free module of this package
(tokenizer, chat_template, gguf_file, sampling) from the coordinator, the client or the HTTP
front end does not import jax or flax. Nothing here imports pydantic, cvxpy or zmq, so the
runtime runs on bare GPU machines.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KVCache": "stage",
    "StageModel": "stage",
    "forward_full": "stage",
    "StepInput": "batching",
    "StepOutput": "batching",
    "StageEngine": "engine",
    "slots_for_kv_budget": "step_program",
    "PagePool": "paged_cache",
    "SamplingParams": "sampling_params",
    "StageWeights": "weights",
    "load_stage_weights": "weights",
    "random_stage_weights": "weights",
    "generate_local": "generate",
    "load_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'helix_jax.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"helix_jax.model.{module}"), name)
    globals()[name] = value
    return value
