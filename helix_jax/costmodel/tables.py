"""Explicit capacity tables: a GPU type whose c(type, k) is given rather than derived.

Sits inside the cost model (topology -> **cost model** -> solver): a topology's
`GpuType.capacity_tokens_per_s` (index k-1, with `max_layers`) is taken as given; this module
derives the step times the simulator and `--emulate` need from it. Plain arithmetic on the
table and the workload's `prompt_per_output`; touches nothing else.

The linear model is `step(p, d) = a + d * b_decode + p * b_prefill` per type, and the decode
batch of a node holding k layers is chosen so that `B_k / (k * step(B_k * r, B_k)) = c(k)`,
which keeps the cost model's consistency promise. The per-token share of the step at the best
k*c(k) is `TABLE_PER_TOKEN_SHARE`, its batch `TABLE_REFERENCE_BATCH`; the context is ignored.
The KV budget (model.py) holds the `B_k L / k` requests that cycle through the node at that
pace, each reserving the workload's residence-weighted `resident_kv_tokens` on each of the k
layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

TABLE_REFERENCE_BATCH = 128  # decode batch at the best k*c(k) of an explicit table
TABLE_PER_TOKEN_SHARE = 0.25  # per-token share of a table type's step time at that batch
TABLE_MAX_PROMPT_TOKENS = 2048  # prefill chunk limit of a table-only type


def best_layer_rate(table: Sequence[float]) -> float:
    """max_k k * c(k) of a capacity table: the token-layers/s a node reaches at its best k
    (a node's strength; 0.0 for a node that holds no layer)."""
    return max((k * c for k, c in enumerate(table, start=1)), default=0.0)


@dataclasses.dataclass(frozen=True)
class TableFit:
    overhead_s: float  # a
    per_decode_s: float  # b_decode
    per_prompt_s: float  # b_prefill
    batches: tuple[int, ...]  # B_k for k = 1..max_layers

    def layer_step_seconds(self, prompt_tokens: int, decode_seqs: int) -> float:
        """One layer on a batch that has some work (the caller returns 0.0 for none)."""
        return self.overhead_s + decode_seqs * self.per_decode_s + prompt_tokens * self.per_prompt_s


def fit_table(table: Sequence[float], prompt_per_output: float) -> TableFit:
    """Linear step model reproducing an explicit capacity table (the module docstring)."""
    r = prompt_per_output
    layer_rates = [k * c for k, c in enumerate(table, start=1)]  # token-layers/s
    best = max(layer_rates)
    per_token_s = TABLE_PER_TOKEN_SHARE / best  # b = b_decode + r * b_prefill
    overhead_s = TABLE_REFERENCE_BATCH * (1 - TABLE_PER_TOKEN_SHARE) / best
    batches = []
    for rate in layer_rates:  # B / (a + b B) = rate  ->  B = a rate / (1 - b rate)
        batches.append(max(1, int(round(overhead_s * rate / (1 - per_token_s * rate)))))
    # split b between decode and prompt tokens in proportion to their FLOPs (equal per token)
    per_decode_s = per_token_s / (1 + r)
    return TableFit(overhead_s, per_decode_s, per_decode_s, tuple(batches))
