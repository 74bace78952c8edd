"""Workloads: what requests look like, to the planner and to every run.

Sits at the head of the data flow beside the topology: the planner and the cost model price
capacities for a `WorkloadShape`; the simulator and the live bench draw requests from a
length sampler and an arrival process.

* `shape`: `WorkloadShape` (mean prompt and output lengths, spread of outputs) and the
  resident KV tokens of a request;
* `lengths`: length samplers (Azure-like generator, fixed, trace CSV) and trace-file readers;
* `arrivals`: open-loop arrival processes (Poisson, trace-shaped).

Imports nothing but the errors: placement.py, the cost model, the solver, the simulator and
bench/ may all use it.
"""

from helix_jax.workload.arrivals import load_arrival_counts, poisson_arrivals, seeded_arrivals, shaped_arrivals
from helix_jax.workload.lengths import (
    MAX_OUTPUT_TOKENS,
    MAX_PROMPT_TOKENS,
    AzureConversationLengths,
    FixedLengths,
    LengthSampler,
    TraceLengths,
    length_sampler,
)
from helix_jax.workload.shape import WorkloadShape, sampled_resident_kv_tokens

__all__ = [
    "MAX_OUTPUT_TOKENS",
    "MAX_PROMPT_TOKENS",
    "AzureConversationLengths",
    "FixedLengths",
    "LengthSampler",
    "TraceLengths",
    "WorkloadShape",
    "length_sampler",
    "load_arrival_counts",
    "poisson_arrivals",
    "sampled_resident_kv_tokens",
    "seeded_arrivals",
    "shaped_arrivals",
]
