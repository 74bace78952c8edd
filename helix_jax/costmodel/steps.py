"""Step times: one layer of a GPU type on a mixed batch, and one batch step of a node.

Sits inside the cost model (topology -> **cost model** -> solver, simulator, `--emulate`
pacing): the clock that the planner's round trips, the simulator's node steps and the
workers' emulated steps all read. Reads the three step-time sources (explicit table,
tables.py; measured profile, profiles.py; roofline, roofline.py); touches nothing else.

Owns **the batch step time by entry layer**: a node holding layers `[start, end)` runs, at
each of its layers, the requests that entered at or before it (partial inference: a request
may enter mid-range), so a step costs `sum over layer segments of layers x
layer_step_seconds(active prompt tokens, active decode seqs, their context)`
(`step_seconds_by_entry_layer`; `uniform_step_seconds` when every request entered at one
layer). The simulator (sim/cluster.py) and the emulated workers (runtime/emulation.py) both
call these; nothing else computes a step.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Callable

from helix_jax.costmodel import roofline
from helix_jax.costmodel.memory import MemoryModel
from helix_jax.errors import ConfigError

LayerSegment = tuple[int, int, int, int, int]  # (first layer, end layer, prompt tokens, decode seqs, context)


def uniform_step_seconds(
    layer_step_seconds: Callable[[int, int, int], float], num_layers: int, prompt_tokens: int, decode_seqs: int, context_tokens: int
) -> float:
    """A step of `num_layers` layers that every request of the batch runs in full."""
    return num_layers * layer_step_seconds(prompt_tokens, decode_seqs, context_tokens)


def entry_layer_segments(loads: Mapping[int, Sequence[int]], end_layer: int) -> list[LayerSegment]:
    """`loads`: entry layer -> (prompt tokens, decode seqs, decode context tokens) of the requests
    entering there. Returns, from the lowest entry layer on, each run of layers with the same
    active requests: (first layer, end layer, their prompt tokens, decode seqs, context)."""
    entries = sorted(loads)
    segments = []
    prompt = seqs = context = 0
    for i, entry in enumerate(entries):
        load = loads[entry]
        prompt += load[0]
        seqs += load[1]
        context += load[2]
        upto = entries[i + 1] if i + 1 < len(entries) else end_layer
        segments.append((entry, upto, prompt, seqs, context))
    return segments


def step_seconds_by_entry_layer(
    layer_step_seconds: Callable[[int, int, int], float], end_layer: int, loads: Mapping[int, Sequence[int]]
) -> float:
    """One batch step of a node whose layers end at `end_layer`, requests entering at the layers
    of `loads` (see `entry_layer_segments`): each layer segment runs those already in."""
    total = 0.0
    for first, upto, prompt, seqs, context in entry_layer_segments(loads, end_layer):
        total += uniform_step_seconds(layer_step_seconds, upto - first, prompt, seqs, context)
    return total


class StepTimes(MemoryModel):
    """Layer step times of one topology's GPU types (part of CostModel)."""

    def layer_step_seconds(self, gpu_type: str, prompt_tokens: int, decode_seqs: int, decode_context_tokens: int = 0) -> float:
        """Wall time of ONE layer on a mixed batch of `prompt_tokens` prompt tokens and
        `decode_seqs` decode sequences reading `decode_context_tokens` KV entries."""
        if prompt_tokens < 0 or decode_seqs < 0 or decode_context_tokens < 0:
            raise ConfigError(
                f"layer_step_seconds needs non-negative counts, got prompt_tokens="
                f"{prompt_tokens}, decode_seqs={decode_seqs}, "
                f"decode_context_tokens={decode_context_tokens}"
            )
        gpu = self._gpu(gpu_type)
        if prompt_tokens == 0 and decode_seqs == 0:
            return 0.0
        if gpu.capacity_tokens_per_s is not None:
            return self._table_fit(gpu_type).layer_step_seconds(prompt_tokens, decode_seqs)
        profile = self._profile(gpu)
        if profile is not None:
            return profile.prefill_seconds_per_layer(prompt_tokens) + profile.decode_seconds_per_layer(decode_seqs)
        return roofline.layer_step_seconds(self.model, gpu, self.workload, prompt_tokens, decode_seqs, decode_context_tokens)

    def layer_step_function(self, gpu_type: str) -> roofline.LayerStepFunction:
        """`layer_step_seconds` of one GPU type as a callable `(prompt_tokens, decode_seqs,
        context_tokens) -> seconds` for a hot loop (the simulator calls it once per step): the
        same arithmetic in the same order, with the per-type constants computed once, so its
        values are equal to the method's, not merely close. Counts are not checked."""
        gpu = self._gpu(gpu_type)
        if gpu.capacity_tokens_per_s is not None or self._profile(gpu) is not None:
            return functools.partial(self.layer_step_seconds, gpu_type)
        return roofline.layer_step_function(self.model, gpu, self.workload)

    def batch_step_seconds(self, gpu_type: str, batch: int) -> float:
        """One layer on the workload's steady mixed batch of `batch` decode sequences: each
        brings `prompt_per_output` prompt tokens of prefill and reads the average context."""
        w = self.workload
        return self.layer_step_seconds(
            gpu_type, int(round(batch * w.prompt_per_output)), batch, int(round(batch * w.average_context_tokens))
        )
