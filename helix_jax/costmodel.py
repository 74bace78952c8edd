"""Cost model: how many tokens/s a node sustains, how long one layer step takes, how fast links are.

Sits between the topology and everything that needs time or throughput figures:
file -> topology -> **cost model** -> solver (c(type, k), link capacities) -> placement ->
scheduler (KV budgets) -> runtime `--emulate` pacing and simulator (layer step times).

"Tokens/s" always means **decode tokens/s of the workload shape** (`WorkloadShape`): every
decode token also pays for `mean_prompt / mean_output` prompt tokens of prefill, amortised.

Three sources, in order of precedence for a GPU type:

1. **Explicit table** (`GpuType.capacity_tokens_per_s`, index k-1, with `max_layers`): the
   capacities are taken as given. Step times are then *derived* from the table with a linear
   model `step(p, d) = a + d * b_decode + p * b_prefill` per type, and the decode batch of a
   node holding k layers is chosen so that `B_k / (k * step(B_k * r, B_k)) = c(k)`, which keeps
   the consistency promise below. The per-token share of the step at the best k*c(k) is
   `TABLE_PER_TOKEN_SHARE`, its batch `TABLE_REFERENCE_BATCH`; the context is ignored. The KV
   budget holds the `B_k L / k` requests that cycle through the node at that pace, each
   reserving the workload's residence-weighted `resident_kv_tokens` on each of the k layers.
2. **Measured profile** (`GpuType.profile_path`, see profiles.py): per-layer prefill and decode
   times are interpolated from the measurements; memory figures come from the profile.
3. **Roofline** (default), from the spec sheet in the topology's GPU catalog:
   * usable memory = memory - `MEMORY_RESERVE_BYTES_PER_GPU` per GPU (context, allocator);
   * weights may use at most `WEIGHT_MEMORY_FRACTION` of usable memory -> `max_layers`, the
     planner's cap; `memory_max_layers` is the physical limit (weights beside KV room for one
     full-context request per layer), which only the separate-pipelines baseline reaches;
   * `ACTIVATION_MEMORY_FRACTION` of usable memory is kept for activations (prefill chunks);
   * the rest is KV cache: `kv_budget_token_layers = KV bytes / kv bytes per token per layer`;
   * resident requests: the KV ledger reserves prompt + output for a request's whole life on
     every node of its route, and long answers stay longest, so a node holding k layers keeps
     `R = kv_budget / (k * resident_kv_tokens)` requests (`WorkloadShape.resident_kv_tokens`,
     E[(p + o) o] / E[o], 1273 tokens on the Azure conversation trace);
   * own-pace batch: a decode token visits the node once per round trip through ~L/k stages
     like it, so `B = R * k / L` sequences share one step at the node's own pace;
   * one layer on a mixed batch of p prompt tokens and d decode sequences:
     `LAYER_OVERHEAD_SECONDS + prefill(p) + decode(d)` where prefill is compute-bound
     (`p * flops / (tflops * PREFILL_FLOPS_EFFICIENCY)`) and decode is the roofline
     `max(bytes / (bandwidth * MEMORY_BANDWIDTH_EFFICIENCY), flops / (tflops * DECODE_FLOPS_EFFICIENCY))`
     with bytes = weights of the layer + KV read + activations;
   * c(type, k) = R / round trip (Little's law). The round trip is the route's, not the node's:
     `HOP_WAIT_FACTOR * (k * own_step + (L - k) * reference_layer_seconds) + route_link_seconds`,
     i.e. the node's own k layers at its own-pace step `own_step = step(B * r, B)` and the other
     L - k layers of the route at the cluster's reference pace (`reference_layer_seconds`: the
     mean per-layer step over the cluster's layer slots); the last term is the link latencies
     of a route and queueing behind prompt chunks on inter-region links. Each layer of the
     route costs ~1.5 steps (half a step waiting for the batch in progress, then its own). So a
     fast GPU holding many layers shortens its routes, and a slow GPU holding many slows them:
     the planner sees that a chain of A100 + L4 + T4 cycles at the sum of its layers' paces
     (pricing every layer of the route at the node's own pace, or at the slower of own and
     reference pace, made slow nodes look as if the whole route ran at their speed and cost
     the planner 10-30% of the throughput its placements reach in simulation);
     r = mean_prompt / mean_output prompt tokens ride along with each decode token (prefill is
     chunked, so decode steps never wait behind a whole prompt).
   The efficiency factors are calibrated so that LLaMA-2-70B on the paper's 24-GPU cluster
   plans to a few hundred tokens/s, the order the prototype served on real GPUs (223 tok/s);
   replace them by measuring (`helix-jax profile`) wherever real hardware is at hand.

Consistency promise (the simulator relies on it): `capacity_tokens_per_s(t, k)` times the
round trip above equals the requests resident on the node (tests/test_costmodel.py), and the
simulator, which chunks prefill to `max_prompt_tokens_per_step`, reaches ~98% of the Helix
placement's max-flow on the 24-GPU cluster (BENCHMARKS.md) when every resident may share one
step. `max_decode_batch` caps a step at `PIPELINE_MICROBATCH_FACTOR` own-pace batches
(`3 R k / L`, at most R): without a cap a route's residents clump into one convoy that visits the
stages one at a time (each node busy ~1/hops of the time); split into micro-batches they
pipeline. With the route-aware round trip the simulator runs the Helix placements of the three
paper clusters at 95-111% of their max-flow, and single-type baseline pipelines at up to ~155%
(the other L - k layers are priced at the cluster's mean pace; BENCHMARKS.md). Multi-GPU nodes
(num_gpus > 1) already carry summed memory, bandwidth and FLOPs in the catalog; the reserve is
per GPU.

Links carry one activation vector per token (`activation_bytes_per_token`); links to or from
the coordinator carry token ids (`COORDINATOR_BYTES_PER_TOKEN`). Link and NIC capacities are in
decode tokens/s like everything else, so they count the prompt traffic too: every decode token
brings `mean_prompt / mean_output` prompt vectors over each node-to-node hop (3.3 on the Azure
trace; the paper's convention of counting decode vectors alone overstates a 12.5 MB/s
inter-region link 4.3x, and FIFO links then queue every decode token behind prompt chunks).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

from helix_jax.errors import ConfigError, TopologyError
from helix_jax.modelconfig import ModelConfig
from helix_jax.profiles import LatencyProfile
from helix_jax.topology import COORDINATOR, GpuType, Topology
from helix_jax.workload_shape import WorkloadShape  # noqa: F401 (re-exported)

# ----------------------------------------------------------------------------- constants
MEMORY_RESERVE_BYTES_PER_GPU = 1.5e9  # CUDA context, framework, allocator fragmentation
WEIGHT_MEMORY_FRACTION = 0.5  # of usable memory (HELIX.md section 2)
ACTIVATION_MEMORY_FRACTION = 0.1  # of usable memory: activations and prefill workspace
MEMORY_BANDWIDTH_EFFICIENCY = 0.4  # share of sheet bandwidth decode kernels reach
DECODE_FLOPS_EFFICIENCY = 0.2  # share of sheet FLOPs on small decode GEMMs
PREFILL_FLOPS_EFFICIENCY = 0.2  # share of sheet FLOPs on prefill chunks
HOP_WAIT_FACTOR = 1.5  # steps per hop a decode token spends: ~half a step waiting, then its own
PIPELINE_MICROBATCH_FACTOR = 3  # decode batch cap per step, in own-pace batches (R k / L)
LAYER_OVERHEAD_SECONDS = 5e-4  # per layer per step: launches, sync, host bookkeeping
MAX_PROMPT_TOKENS_CAP = 128  # prefill chunk limit even when memory allows more
ACTIVATION_BYTES_FACTOR = 6  # live activation bytes per prompt token ~ 6 x intermediate x dtype
COORDINATOR_BYTES_PER_TOKEN = 4  # int32 token ids
LINK_PLANNING_UTILIZATION = 0.5  # busiest share of a slow (inter-region) link a plan may use
TABLE_REFERENCE_BATCH = 128  # decode batch at the best k*c(k) of an explicit table
TABLE_PER_TOKEN_SHARE = 0.25  # per-token share of a table type's step time at that batch
TABLE_MAX_PROMPT_TOKENS = 2048  # prefill chunk limit of a table-only type


def best_layer_rate(table: Sequence[float]) -> float:
    """max_k k * c(k) of a capacity table: the token-layers/s a node reaches at its best k
    (a node's strength; 0.0 for a node that holds no layer)."""
    return max((k * c for k, c in enumerate(table, start=1)), default=0.0)


@dataclasses.dataclass(frozen=True)
class _TableFit:
    overhead_s: float  # a
    per_decode_s: float  # b_decode
    per_prompt_s: float  # b_prefill
    batches: tuple[int, ...]  # B_k for k = 1..max_layers


class CostModel:
    """Throughput and timing figures of one topology (see the module docstring)."""

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
            raise TopologyError(f"unknown GPU type {gpu_type!r}; types in this topology: "
                                f"{', '.join(sorted(self.topology.gpu_types))}") from None

    def _profile(self, gpu: GpuType) -> LatencyProfile | None:
        if gpu.profile_path is None or gpu.capacity_tokens_per_s is not None:
            return None
        if gpu.name not in self._profiles:
            self._profiles[gpu.name] = LatencyProfile.load(gpu.profile_path)
        return self._profiles[gpu.name]

    def _usable_bytes(self, gpu: GpuType) -> float:
        profile = self._profile(gpu)
        total = profile.memory_bytes_total if profile else gpu.memory_bytes
        return max(0.0, total - MEMORY_RESERVE_BYTES_PER_GPU * gpu.num_gpus)

    def _weight_bytes(self, gpu: GpuType) -> float:
        profile = self._profile(gpu)
        return profile.weight_bytes_per_layer if profile else float(self.model.weight_bytes_per_layer)

    # ---- memory ----
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
            raise ConfigError(f"GPU type {gpu_type!r} holds 1..{top} layers of {self.model.name}, "
                              f"asked about {num_layers}")

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
            return (profile.memory_bytes_free_for_kv_per_layer_held
                    + (profile.layers_measured - num_layers_held) * profile.weight_bytes_per_layer)
        usable = self._usable_bytes(gpu)
        return usable * (1 - ACTIVATION_MEMORY_FRACTION) - num_layers_held * self._weight_bytes(gpu)

    def max_decode_batch(self, gpu_type: str, num_layers_held: int) -> int:
        gpu = self._gpu(gpu_type)
        if gpu.capacity_tokens_per_s is not None:
            self._check_k(gpu_type, num_layers_held)
            return self._table_fit(gpu_type).batches[num_layers_held - 1]
        # micro-batches: a step takes at most PIPELINE_MICROBATCH_FACTOR x the own-pace share
        # (R k / L) of the residents, so they cross the route as several micro-batches that keep
        # every stage busy instead of one convoy that leaves the other stages idle
        residents = self.resident_requests(gpu_type, num_layers_held)
        share = PIPELINE_MICROBATCH_FACTOR * residents * num_layers_held / self.model.num_layers
        return max(1, int(min(residents, share)))

    def resident_requests(self, gpu_type: str, num_layers_held: int) -> float:
        """Requests whose KV fits on a node at once (residence-weighted reservation)."""
        budget = self.kv_budget_token_layers(gpu_type, num_layers_held)
        return budget / (num_layers_held * self.workload.resident_kv_tokens)

    def _own_pace_layer_seconds(self, gpu_type: str, num_layers_held: int) -> float:
        """One layer step at the node's own pace: a resident request visits this node once per
        round trip through ~L/k stages like it, so k/L of the residents share one batch."""
        residents = self.resident_requests(gpu_type, num_layers_held)
        batch = max(1, int(residents * num_layers_held / self.model.num_layers))
        return self._batch_step_seconds(gpu_type, batch)

    def max_prompt_tokens_per_step(self, gpu_type: str) -> int:
        gpu = self._gpu(gpu_type)
        if gpu.capacity_tokens_per_s is not None:
            return TABLE_MAX_PROMPT_TOKENS
        per_token = ACTIVATION_BYTES_FACTOR * self.model.intermediate_size * self.model.bytes_per_param
        fits = int(ACTIVATION_MEMORY_FRACTION * self._usable_bytes(gpu) // per_token)
        return max(1, min(MAX_PROMPT_TOKENS_CAP, fits))

    # ---- time ----
    def layer_step_seconds(self, gpu_type: str, prompt_tokens: int, decode_seqs: int,
                           decode_context_tokens: int = 0) -> float:
        """Wall time of ONE layer on a mixed batch (see the module docstring)."""
        if prompt_tokens < 0 or decode_seqs < 0 or decode_context_tokens < 0:
            raise ConfigError(f"layer_step_seconds needs non-negative counts, got prompt_tokens="
                              f"{prompt_tokens}, decode_seqs={decode_seqs}, "
                              f"decode_context_tokens={decode_context_tokens}")
        gpu = self._gpu(gpu_type)
        if prompt_tokens == 0 and decode_seqs == 0:
            return 0.0
        if gpu.capacity_tokens_per_s is not None:
            fit = self._table_fit(gpu_type)
            return fit.overhead_s + decode_seqs * fit.per_decode_s + prompt_tokens * fit.per_prompt_s
        profile = self._profile(gpu)
        if profile is not None:
            return profile.prefill_seconds_per_layer(prompt_tokens) + profile.decode_seconds_per_layer(decode_seqs)
        return (LAYER_OVERHEAD_SECONDS + self._roofline_prefill_s(gpu, prompt_tokens)
                + self._roofline_decode_s(gpu, decode_seqs, decode_context_tokens))

    def layer_step_function(self, gpu_type: str):
        """`layer_step_seconds` of one GPU type as a callable `(prompt_tokens, decode_seqs,
        context_tokens) -> seconds` for a hot loop (the simulator calls it once per step): the
        same arithmetic in the same order, with the per-type constants computed once, so its
        values are equal to the method's, not merely close. Counts are not checked."""
        gpu = self._gpu(gpu_type)
        if gpu.capacity_tokens_per_s is not None or self._profile(gpu) is not None:
            return functools.partial(self.layer_step_seconds, gpu_type)
        m = self.model
        overhead = LAYER_OVERHEAD_SECONDS
        prefill_flops = m.flops_per_token_per_layer + m.attention_flops_per_token_per_layer(
            int(self.workload.mean_prompt_tokens / 2))
        prefill_rate = gpu.tflops * 1e12 * PREFILL_FLOPS_EFFICIENCY
        weights, kv_per_token, activation = (m.weight_bytes_per_layer, m.kv_bytes_per_token_per_layer,
                                             m.activation_bytes_per_token)
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

    def _roofline_prefill_s(self, gpu: GpuType, prompt_tokens: int) -> float:
        if prompt_tokens == 0:
            return 0.0
        m = self.model
        attention = m.attention_flops_per_token_per_layer(int(self.workload.mean_prompt_tokens / 2))
        flops = prompt_tokens * (m.flops_per_token_per_layer + attention)
        return flops / (gpu.tflops * 1e12 * PREFILL_FLOPS_EFFICIENCY)

    def _roofline_decode_s(self, gpu: GpuType, decode_seqs: int, context_tokens: int) -> float:
        if decode_seqs == 0:
            return 0.0
        m = self.model
        moved_bytes = (m.weight_bytes_per_layer + context_tokens * m.kv_bytes_per_token_per_layer
                       + 2 * decode_seqs * m.activation_bytes_per_token)
        flops = (decode_seqs * m.flops_per_token_per_layer
                 + m.attention_flops_per_token_per_layer(context_tokens))
        return max(moved_bytes / (gpu.memory_bandwidth_bytes_per_s * MEMORY_BANDWIDTH_EFFICIENCY),
                   flops / (gpu.tflops * 1e12 * DECODE_FLOPS_EFFICIENCY))

    def _batch_step_seconds(self, gpu_type: str, batch: int) -> float:
        """One layer on the workload's steady mixed batch of `batch` decode sequences."""
        w = self.workload
        return self.layer_step_seconds(gpu_type, int(round(batch * w.prompt_per_output)), batch,
                                       int(round(batch * w.average_context_tokens)))

    # ---- throughput ----
    def capacity_tokens_per_s(self, gpu_type: str, num_layers: int) -> float:
        """c(type, k): decode tokens/s of a node of this type holding k layers."""
        self._check_k(gpu_type, num_layers)
        gpu = self._gpu(gpu_type)
        if gpu.capacity_tokens_per_s is not None:
            return float(gpu.capacity_tokens_per_s[num_layers - 1])
        return self._derived_capacity(gpu_type, num_layers)

    @functools.lru_cache(maxsize=None)
    def _derived_capacity(self, gpu_type: str, num_layers: int) -> float:
        # Little's law: residents / round trip of the routes through this node.
        return self.resident_requests(gpu_type, num_layers) / self.round_trip_seconds(gpu_type, num_layers)

    def round_trip_seconds(self, gpu_type: str, num_layers_held: int) -> float:
        """A decode token's round trip on a route through a node of this type holding k layers:
        all L layers, each costing HOP_WAIT_FACTOR steps (half a step waiting for the batch in
        progress, then its own), the node's k at its own pace and the other L - k at the
        cluster's reference pace, plus the route's link time."""
        own_layer_s = self._own_pace_layer_seconds(gpu_type, num_layers_held)
        other_layers = self.model.num_layers - num_layers_held
        return (HOP_WAIT_FACTOR * (num_layers_held * own_layer_s + other_layers * self.reference_layer_seconds)
                + self.route_link_seconds)

    @functools.cached_property
    def route_link_seconds(self) -> float:
        """Time a decode token spends on links per round trip (a cluster-wide estimate, like
        `reference_layer_seconds`): ~`L / mean max_layers` hops at the mean link latency between
        nodes of one region, plus, when nodes sit in several regions, the crossings of a plan
        that visits each region once (region windows) at the mean latency between regions: the
        activation crossings also wait behind prompt chunks on a FIFO link planned to
        `LINK_PLANNING_UTILIZATION` (M/D/1: rho / (2 (1 - rho)) chunk wire times), the token
        ids back to (and, if it has no nodes, into) the coordinator's region pay latency only."""
        nodes = self.topology.nodes
        region = {n.name: n.region or "default" for n in nodes}
        tops = [self.max_layers(n.gpu) for n in nodes]
        mean_top = sum(tops) / len(tops) if tops else 0
        if mean_top <= 0:
            return 0.0
        within: list[Any] = []  # Links
        between: list[Any] = []
        for a in nodes:
            for b in nodes:
                if a.name != b.name:
                    (within if region[a.name] == region[b.name] else between).append(self.topology.link(a.name, b.name))
        hops = self.model.num_layers / mean_top
        total = hops * (sum(link.latency_ms for link in within) / len(within) / 1e3 if within else 0.0)
        node_regions = set(region.values())
        coordinator_region = self.topology.coordinator.region or "default"
        if between and len(node_regions | {coordinator_region}) > 1:
            rho = LINK_PLANNING_UTILIZATION
            chunk_bytes = MAX_PROMPT_TOKENS_CAP * self.model.activation_bytes_per_token
            latency_s = sum(link.latency_ms for link in between) / len(between) / 1e3
            queue_s = sum(rho / (2 * (1 - rho)) * chunk_bytes / link.bandwidth_bytes_per_s
                          for link in between) / len(between)
            # activations cross between node regions; token ids go back (and in) latency-only
            id_crossings = 1 + (coordinator_region not in node_regions)
            total += (len(node_regions) - 1) * (latency_s + queue_s) + id_crossings * latency_s
        return total

    @functools.cached_property
    def reference_layer_seconds(self) -> float:
        """The cluster's typical per-layer decode step: routes mix node types, so a resident
        request cycles at the pace of the layers it crosses. Mean over the nodes' layer slots
        (each node type at its own-pace batch while holding its maximum), roofline and profile
        types only (explicit tables already state what a node achieves)."""
        total_s, slots = 0.0, 0
        for node in self.topology.nodes:
            top, seconds = self.reference_slots(node.gpu)
            total_s += top * seconds
            slots += top
        return total_s / slots if slots else 0.0

    def reference_slots(self, gpu_type: str) -> tuple[int, float]:
        """(layer slots, seconds per layer step) one node of this type adds to
        `reference_layer_seconds`: its max_layers at its own pace while holding them; (0, 0.0)
        for explicit tables and types that hold no layer."""
        gpu = self._gpu(gpu_type)
        top = self.max_layers(gpu_type)
        if gpu.capacity_tokens_per_s is not None or top == 0:
            return 0, 0.0
        return top, self._own_pace_layer_seconds(gpu_type, top)

    def capacity_table(self, gpu_type: str) -> list[float]:
        return [self.capacity_tokens_per_s(gpu_type, k) for k in range(1, self.max_layers(gpu_type) + 1)]

    def node_capacity_tokens_per_s(self, node: str, num_layers: int) -> float:
        return self.capacity_tokens_per_s(self.topology.node(node).gpu, num_layers)

    # ---- links ----
    def bytes_per_vector(self, src: str, dst: str) -> float:
        """Bytes one token occupies on the link src -> dst: an activation vector between nodes,
        a token id to or from the coordinator."""
        if COORDINATOR in (src, dst):
            return float(COORDINATOR_BYTES_PER_TOKEN)
        return float(self.model.activation_bytes_per_token)

    def _vectors_per_decode_token(self, dst: str) -> float:
        """Tokens a link carries per decode token of the workload: each decode token's own vector
        plus `prompt_per_output` prompt vectors (prefill crosses the same hops), except on the
        way back to the coordinator, which gets one sampled-position vector per step."""
        return 1.0 if dst == COORDINATOR else 1.0 + self.workload.prompt_per_output

    def link_tokens_per_s(self, src: str, dst: str) -> float:
        """Decode tokens/s the link src -> dst carries, prompt traffic included."""
        link = self.topology.link(src, dst)
        return link.bandwidth_bytes_per_s / (self.bytes_per_vector(src, dst) * self._vectors_per_decode_token(dst))

    def nic_tokens_per_s(self, node: str) -> float | None:
        """Decode tokens/s the node's NIC passes each way, prompt activations included
        (node-to-node traffic only; token ids to and from the coordinator bypass it), or None
        where the catalog sets no NIC."""
        nic = self.topology.gpu_of(node).nic_bandwidth_bytes_per_s
        if nic is None:
            return None
        return nic / (self.model.activation_bytes_per_token * (1.0 + self.workload.prompt_per_output))

    def transfer_seconds(self, src: str, dst: str, num_tokens: int) -> float:
        """Latency + wire time of one message of `num_tokens` vectors (prompt or decode)."""
        link = self.topology.link(src, dst)
        return link.latency_ms / 1e3 + num_tokens * self.bytes_per_vector(src, dst) / link.bandwidth_bytes_per_s

    # ---- explicit tables ----
    @functools.lru_cache(maxsize=None)
    def _table_fit(self, gpu_type: str) -> _TableFit:
        """Linear step model reproducing an explicit capacity table (module docstring, item 1)."""
        table = self._gpu(gpu_type).capacity_tokens_per_s or ()
        r = self.workload.prompt_per_output
        layer_rates = [k * c for k, c in enumerate(table, start=1)]  # token-layers/s
        best = max(layer_rates)
        per_token_s = TABLE_PER_TOKEN_SHARE / best  # b = b_decode + r * b_prefill
        overhead_s = TABLE_REFERENCE_BATCH * (1 - TABLE_PER_TOKEN_SHARE) / best
        batches = []
        for rate in layer_rates:  # B / (a + b B) = rate  ->  B = a rate / (1 - b rate)
            batches.append(max(1, int(round(overhead_s * rate / (1 - per_token_s * rate)))))
        # split b between decode and prompt tokens in proportion to their FLOPs (equal per token)
        per_decode_s = per_token_s / (1 + r)
        return _TableFit(overhead_s, per_decode_s, per_decode_s, tuple(batches))
