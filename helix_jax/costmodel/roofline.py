"""Roofline step times: one layer of a spec-sheet GPU type on a mixed batch.

Sits inside the cost model (topology -> **cost model** -> solver, simulator, `--emulate`):
the default source of step times when a GPU type has neither an explicit table (tables.py)
nor a measured profile (profiles.py). Reads the model's dimensions, the GPU's catalog entry
and the workload shape; touches nothing else.

One layer on a mixed batch of p prompt tokens and d decode sequences costs
`LAYER_OVERHEAD_SECONDS + prefill(p) + decode(d)`, where prefill is compute-bound
(`p * flops / (tflops * PREFILL_FLOPS_EFFICIENCY)`, attention over half the workload's mean
prompt) and decode is the roofline
`max(bytes / (bandwidth * MEMORY_BANDWIDTH_EFFICIENCY), flops / (tflops * DECODE_FLOPS_EFFICIENCY))`
with bytes = weights of the layer + KV read + activations. The efficiency factors are
calibrated so that LLaMA-2-70B on the paper's 24-GPU cluster plans to a few hundred tokens/s,
the order the prototype served on real GPUs (223 tok/s); replace them by measuring
(`helix-jax profile`) wherever real hardware is at hand.
"""

from __future__ import annotations

from typing import Callable

from helix_jax.modelconfig import ModelConfig
from helix_jax.topology import GpuType
from helix_jax.workload import WorkloadShape

MEMORY_BANDWIDTH_EFFICIENCY = 0.4  # share of sheet bandwidth decode kernels reach
DECODE_FLOPS_EFFICIENCY = 0.2  # share of sheet FLOPs on small decode GEMMs
PREFILL_FLOPS_EFFICIENCY = 0.2  # share of sheet FLOPs on prefill chunks
LAYER_OVERHEAD_SECONDS = 5e-4  # per layer per step: launches, sync, host bookkeeping

LayerStepFunction = Callable[..., float]  # (prompt_tokens, decode_seqs, context_tokens=0) -> seconds


def prefill_seconds(m: ModelConfig, gpu: GpuType, workload: WorkloadShape, prompt_tokens: int) -> float:
    if prompt_tokens == 0:
        return 0.0
    attention = m.attention_flops_per_token_per_layer(int(workload.mean_prompt_tokens / 2))
    flops = prompt_tokens * (m.flops_per_token_per_layer + attention)
    return flops / (gpu.tflops * 1e12 * PREFILL_FLOPS_EFFICIENCY)


def decode_seconds(m: ModelConfig, gpu: GpuType, decode_seqs: int, context_tokens: int) -> float:
    if decode_seqs == 0:
        return 0.0
    moved_bytes = (
        m.weight_bytes_per_layer + context_tokens * m.kv_bytes_per_token_per_layer + 2 * decode_seqs * m.activation_bytes_per_token
    )
    flops = decode_seqs * m.flops_per_token_per_layer + m.attention_flops_per_token_per_layer(context_tokens)
    return max(
        moved_bytes / (gpu.memory_bandwidth_bytes_per_s * MEMORY_BANDWIDTH_EFFICIENCY),
        flops / (gpu.tflops * 1e12 * DECODE_FLOPS_EFFICIENCY),
    )


def layer_step_seconds(
    m: ModelConfig, gpu: GpuType, workload: WorkloadShape, prompt_tokens: int, decode_seqs: int, context_tokens: int
) -> float:
    """One layer on a batch that has some work (the caller returns 0.0 for none)."""
    return LAYER_OVERHEAD_SECONDS + prefill_seconds(m, gpu, workload, prompt_tokens) + decode_seconds(m, gpu, decode_seqs, context_tokens)


def layer_step_function(m: ModelConfig, gpu: GpuType, workload: WorkloadShape) -> LayerStepFunction:
    """`layer_step_seconds` (with 0.0 for no work) as a callable `(prompt_tokens, decode_seqs,
    context_tokens) -> seconds` for a hot loop: the same arithmetic in the same order, with the
    per-type constants computed once, so its values are equal, not merely close. Counts are not
    checked."""
    overhead = LAYER_OVERHEAD_SECONDS
    prefill_flops = m.flops_per_token_per_layer + m.attention_flops_per_token_per_layer(int(workload.mean_prompt_tokens / 2))
    prefill_rate = gpu.tflops * 1e12 * PREFILL_FLOPS_EFFICIENCY
    weights, kv_per_token, activation = (m.weight_bytes_per_layer, m.kv_bytes_per_token_per_layer, m.activation_bytes_per_token)
    flops_per_seq = m.flops_per_token_per_layer
    bandwidth = gpu.memory_bandwidth_bytes_per_s * MEMORY_BANDWIDTH_EFFICIENCY
    decode_rate = gpu.tflops * 1e12 * DECODE_FLOPS_EFFICIENCY
    attention_per_key = m.attention_flops_per_token_per_layer(1)  # integer FLOPs, linear in the keys

    def step_seconds(prompt_tokens: int, decode_seqs: int, context_tokens: int = 0) -> float:
        if not decode_seqs:
            return overhead + prompt_tokens * prefill_flops / prefill_rate if prompt_tokens else 0.0
        prefill = prompt_tokens * prefill_flops / prefill_rate if prompt_tokens else 0.0
        moved_s = (weights + context_tokens * kv_per_token + 2 * decode_seqs * activation) / bandwidth
        compute_s = (decode_seqs * flops_per_seq + attention_per_key * context_tokens) / decode_rate
        return overhead + prefill + (moved_s if moved_s > compute_s else compute_s)

    return step_seconds
