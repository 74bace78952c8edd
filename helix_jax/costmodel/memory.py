"""What a node of one GPU type holds: layers, KV budget and the prompt tokens of one step.

Sits inside the cost model (topology -> **cost model** -> solver, scheduler KV budgets,
simulator and workers' per-step prompt budget). `MemoryModel` is the root of `CostModel`
(model.py): the per-type lookups (catalog entry, measured profile, explicit-table fit) and the
memory figures every other part builds on. Reads the topology, the model's dimensions and
measured profiles; touches nothing else.

Owns **the prefill token budget per step** (`max_prompt_tokens_per_step`): the prompt tokens
one batch step of a node may take. The simulator chunks prompts to it and the coordinator
sends it to each worker (`assign`), which chunks its prompts to it; nothing else computes it.

Roofline memory (the default; a measured profile states its own figures):

* usable memory = memory - `MEMORY_RESERVE_BYTES_PER_GPU` per GPU (context, allocator);
  multi-GPU nodes (num_gpus > 1) already carry summed memory in the catalog;
* weights may use at most `WEIGHT_MEMORY_FRACTION` of usable memory -> `max_layers`, the
  planner's cap; `memory_max_layers` is the physical limit (weights beside KV room for one
  full-context request per layer), which only the separate-pipelines baseline reaches;
* `ACTIVATION_MEMORY_FRACTION` of usable memory is kept for activations (prefill chunks of at
  most `MAX_PROMPT_TOKENS_CAP` tokens, `ACTIVATION_BYTES_FACTOR` x intermediate x dtype each);
* the rest is KV cache: `kv_budget_token_layers = KV bytes / kv bytes per token per layer`.
"""

from __future__ import annotations

import functools
import math

from helix_jax.costmodel.tables import TABLE_MAX_PROMPT_TOKENS, TableFit, fit_table
from helix_jax.errors import ConfigError, TopologyError
from helix_jax.modelconfig import ModelConfig
from helix_jax.profiles import LatencyProfile
from helix_jax.topology import GpuType, Topology
from helix_jax.workload import WorkloadShape

MEMORY_RESERVE_BYTES_PER_GPU = 1.5e9  # CUDA context, framework, allocator fragmentation
WEIGHT_MEMORY_FRACTION = 0.5  # of usable memory (HELIX.md section 2)
ACTIVATION_MEMORY_FRACTION = 0.1  # of usable memory: activations and prefill workspace
MAX_PROMPT_TOKENS_CAP = 128  # prefill chunk limit even when memory allows more
ACTIVATION_BYTES_FACTOR = 6  # live activation bytes per prompt token ~ 6 x intermediate x dtype


class MemoryModel:
    """Per-type lookups and memory figures of one topology (the root of CostModel)."""

    def __init__(self, topology: Topology, workload: WorkloadShape | None = None) -> None:
        self.topology = topology
        self.model: ModelConfig = topology.model
        self.workload = workload or WorkloadShape()
        self._profiles: dict[str, LatencyProfile] = {}

    # ---- GPU type helpers ----
    def _gpu(self, gpu_type: str) -> GpuType:
        try:
            return self.topology.gpu_types[gpu_type]
        except KeyError:
            raise TopologyError(
                f"unknown GPU type {gpu_type!r}; types in this topology: {', '.join(sorted(self.topology.gpu_types))}"
            ) from None

    def _profile(self, gpu: GpuType) -> LatencyProfile | None:
        if gpu.profile_path is None or gpu.capacity_tokens_per_s is not None:
            return None
        if gpu.name not in self._profiles:
            self._profiles[gpu.name] = LatencyProfile.load(gpu.profile_path)
        return self._profiles[gpu.name]

    @functools.lru_cache(maxsize=None)
    def _table_fit(self, gpu_type: str) -> TableFit:
        """Linear step model reproducing an explicit capacity table (tables.py)."""
        return fit_table(self._gpu(gpu_type).capacity_tokens_per_s or (), self.workload.prompt_per_output)

    def _usable_bytes(self, gpu: GpuType) -> float:
        profile = self._profile(gpu)
        total = profile.memory_bytes_total if profile else gpu.memory_bytes
        return max(0.0, total - MEMORY_RESERVE_BYTES_PER_GPU * gpu.num_gpus)

    def _weight_bytes(self, gpu: GpuType) -> float:
        profile = self._profile(gpu)
        return profile.weight_bytes_per_layer if profile else float(self.model.weight_bytes_per_layer)

    # ---- layers ----
    def max_layers(self, gpu_type: str) -> int:
        gpu = self._gpu(gpu_type)
        if gpu.max_layers is not None:
            return min(gpu.max_layers, self.model.num_layers)
        if gpu.capacity_tokens_per_s is not None:
            return min(len(gpu.capacity_tokens_per_s), self.model.num_layers)
        fits = int(WEIGHT_MEMORY_FRACTION * self._usable_bytes(gpu) // self._weight_bytes(gpu))
        return max(0, min(fits, self.model.num_layers))

    @functools.lru_cache(maxsize=None)
    def memory_max_layers(self, gpu_type: str) -> int:
        """The most layers a node of this type can physically hold: their weights fit beside the
        activation reserve with KV room left for one request of the model's full context
        (`max_position_embeddings`) on each of them. `max_layers` is the planner's cap (weights in
        at most about half of memory, HELIX.md section 2); this is the hard limit that a plain
        pipeline engine filling memory with weights reaches (the separate-pipelines baseline,
        where every GPU type holds the whole model by itself). Explicit tables and `max_layers`
        overrides state both limits at once."""
        gpu = self._gpu(gpu_type)
        top = self.max_layers(gpu_type)
        if gpu.max_layers is not None or gpu.capacity_tokens_per_s is not None:
            return top
        floor = self.model.max_position_embeddings * self.model.kv_bytes_per_token_per_layer
        k = top
        while k < self.model.num_layers and self._kv_bytes(gpu, k + 1) >= (k + 1) * floor:
            k += 1
        return k

    def _check_k(self, gpu_type: str, num_layers: int) -> None:
        top = self.memory_max_layers(gpu_type)
        if not 1 <= num_layers <= top:
            raise ConfigError(f"GPU type {gpu_type!r} holds 1..{top} layers of {self.model.name}, asked about {num_layers}")

    # ---- KV cache ----
    def kv_budget_token_layers(self, gpu_type: str, num_layers_held: int) -> int:
        self._check_k(gpu_type, num_layers_held)
        gpu = self._gpu(gpu_type)
        if gpu.capacity_tokens_per_s is not None:
            batch = self._table_fit(gpu_type).batches[num_layers_held - 1]
            return int(math.ceil(batch * self.model.num_layers * self.workload.resident_kv_tokens))
        return max(0, int(self._kv_bytes(gpu, num_layers_held) // self.model.kv_bytes_per_token_per_layer))

    def _kv_bytes(self, gpu: GpuType, num_layers_held: int) -> float:
        """KV cache bytes left on a node of a roofline or profiled type holding k layers."""
        profile = self._profile(gpu)
        if profile is not None and profile.memory_bytes_free_for_kv_per_layer_held is not None:
            # measured KV room while holding `layers_measured` layers; each layer more costs its weights
            return (
                profile.memory_bytes_free_for_kv_per_layer_held
                + (profile.layers_measured - num_layers_held) * profile.weight_bytes_per_layer
            )
        usable = self._usable_bytes(gpu)
        return usable * (1 - ACTIVATION_MEMORY_FRACTION) - num_layers_held * self._weight_bytes(gpu)

    # ---- activations ----
    def max_prompt_tokens_per_step(self, gpu_type: str) -> int:
        """Prompt tokens one batch step of a node of this type may take (longer prompts are
        prefilled in chunks over several steps): as many as the activation reserve holds, at
        most `MAX_PROMPT_TOKENS_CAP`; `TABLE_MAX_PROMPT_TOKENS` for an explicit table; the
        type's own `max_prompt_tokens_per_step` where the topology states one."""
        gpu = self._gpu(gpu_type)
        if gpu.max_prompt_tokens_per_step is not None:
            return gpu.max_prompt_tokens_per_step
        if gpu.capacity_tokens_per_s is not None:
            return TABLE_MAX_PROMPT_TOKENS
        per_token = ACTIVATION_BYTES_FACTOR * self.model.intermediate_size * self.model.bytes_per_param
        fits = int(ACTIVATION_MEMORY_FRACTION * self._usable_bytes(gpu) // per_token)
        return max(1, min(MAX_PROMPT_TOKENS_CAP, fits))
