"""Flax LLaMA-family model runtime: layer-range stages, KV cache, sampling, checkpoints.

Public API (implementation in the private-by-convention modules of this package):
  StageEngine, StepInput, StepOutput, SamplingParams  - the compute half of a worker
  StageWeights, load_stage_weights, random_stage_weights - weights of a layer range
  generate_local, load_tokenizer                          - whole-model generation on one device
  slots_for_kv_budget                                     - KV sizing from a memory budget
Imports jax and flax only (no pydantic, cvxpy or zmq), so it runs on bare GPU machines.
"""

from helix_jax.model.batching import StepInput, StepOutput
from helix_jax.model.engine import StageEngine, slots_for_kv_budget
from helix_jax.model.sampling import SamplingParams
from helix_jax.model.stage import KVCache, StageModel, forward_full
from helix_jax.model.weights import StageWeights, load_stage_weights, random_stage_weights

__all__ = [
    "KVCache", "SamplingParams", "StageEngine", "StageModel", "StageWeights", "StepInput",
    "StepOutput", "forward_full", "load_stage_weights", "random_stage_weights",
    "slots_for_kv_budget",
]
