"""Cost model: how many tokens/s a node sustains, how long one layer step takes, how fast links are.

Sits between the topology and everything that needs time or throughput figures:
file -> topology -> **cost model** -> solver (c(type, k), link capacities) -> placement ->
scheduler (KV budgets) -> runtime `--emulate` pacing and simulator (layer step times).

"Tokens/s" always means **decode tokens/s of the workload shape** (`WorkloadShape`): every
decode token also pays for `mean_prompt / mean_output` prompt tokens of prefill, amortised.

One clock: each quantity that the planner, the simulator and the runtime must agree on has
one owner, and everything else calls it:

* link transfer time (latency + bytes / bandwidth, FIFO): `links.py` (`FifoLink`,
  `CostModel.transfer_seconds`);
* batch step time by entry layer: `steps.py` (`step_seconds_by_entry_layer`,
  `uniform_step_seconds`, `CostModel.layer_step_seconds`);
* the prefill token budget per step: `memory.py` (`CostModel.max_prompt_tokens_per_step`);
* resident KV tokens: `helix_jax.workload.shape` (`WorkloadShape.resident_kv_tokens`).

Modules: `model` (CostModel: residency, c(type, k), round trips), `memory` (layers, KV and
prompt budgets), `steps` (step times), `roofline` (spec-sheet step arithmetic), `tables`
(explicit capacity tables), `links` (transfers, link and NIC capacities).
"""

from helix_jax.costmodel.links import COORDINATOR_BYTES_PER_TOKEN, LINK_PLANNING_UTILIZATION, FifoLink
from helix_jax.costmodel.memory import (
    ACTIVATION_BYTES_FACTOR,
    ACTIVATION_MEMORY_FRACTION,
    MAX_PROMPT_TOKENS_CAP,
    MEMORY_RESERVE_BYTES_PER_GPU,
    WEIGHT_MEMORY_FRACTION,
)
from helix_jax.costmodel.model import HOP_WAIT_FACTOR, PIPELINE_MICROBATCH_FACTOR, CostModel
from helix_jax.costmodel.roofline import (
    DECODE_FLOPS_EFFICIENCY,
    LAYER_OVERHEAD_SECONDS,
    MEMORY_BANDWIDTH_EFFICIENCY,
    PREFILL_FLOPS_EFFICIENCY,
)
from helix_jax.costmodel.steps import entry_layer_segments, step_seconds_by_entry_layer, uniform_step_seconds
from helix_jax.costmodel.tables import (
    TABLE_MAX_PROMPT_TOKENS,
    TABLE_PER_TOKEN_SHARE,
    TABLE_REFERENCE_BATCH,
    best_layer_rate,
)
from helix_jax.workload.shape import WorkloadShape

__all__ = [
    "ACTIVATION_BYTES_FACTOR",
    "ACTIVATION_MEMORY_FRACTION",
    "COORDINATOR_BYTES_PER_TOKEN",
    "DECODE_FLOPS_EFFICIENCY",
    "HOP_WAIT_FACTOR",
    "LAYER_OVERHEAD_SECONDS",
    "LINK_PLANNING_UTILIZATION",
    "MAX_PROMPT_TOKENS_CAP",
    "MEMORY_BANDWIDTH_EFFICIENCY",
    "MEMORY_RESERVE_BYTES_PER_GPU",
    "PIPELINE_MICROBATCH_FACTOR",
    "PREFILL_FLOPS_EFFICIENCY",
    "TABLE_MAX_PROMPT_TOKENS",
    "TABLE_PER_TOKEN_SHARE",
    "TABLE_REFERENCE_BATCH",
    "WEIGHT_MEMORY_FRACTION",
    "CostModel",
    "FifoLink",
    "WorkloadShape",
    "best_layer_rate",
    "entry_layer_segments",
    "step_seconds_by_entry_layer",
    "uniform_step_seconds",
]
