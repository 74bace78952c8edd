"""CostModel: how many decode tokens/s a node of a GPU type sustains holding k layers.

Sits between the topology and everything that needs time or throughput figures:
file -> topology -> **cost model** -> solver (c(type, k), link capacities) -> placement ->
scheduler (KV budgets) -> runtime `--emulate` pacing and simulator (layer step times).
`CostModel` joins the parts: memory.py (layers, KV budget, prompt budget), steps.py (step
times), links.py (transfers, link capacities); this module adds residency and throughput.

Three sources, in order of precedence for a GPU type: an explicit table (tables.py: the
capacities are taken as given, step times derived), a measured profile (profiles.py), the
roofline (roofline.py, memory.py). For the roofline and profiles, c(type, k) is derived:

* resident requests: the KV ledger reserves prompt + output for a request's whole life on
  every node of its route, and long answers stay longest, so a node holding k layers keeps
  `R = kv_budget / (k * resident_kv_tokens)` requests (`WorkloadShape.resident_kv_tokens`,
  E[(p + o) o] / E[o], 1273 tokens on the Azure conversation trace);
* own-pace batch: a decode token visits the node once per round trip through ~L/k stages like
  it, so `B = R * k / L` sequences share one step at the node's own pace;
* c(type, k) = R / round trip (Little's law). The round trip is the route's, not the node's:
  `HOP_WAIT_FACTOR * (k * own_step + (L - k) * reference_layer_seconds) + route_link_seconds`,
  i.e. the node's own k layers at its own-pace step `own_step = step(B * r, B)` and the other
  L - k layers of the route at the cluster's reference pace (`reference_layer_seconds`: the
  mean per-layer step over the cluster's layer slots); the last term is the link latencies of
  a route and queueing behind prompt chunks on inter-region links (links.py). Each layer of
  the route costs ~1.5 steps (half a step waiting for the batch in progress, then its own). So
  a fast GPU holding many layers shortens its routes, and a slow GPU holding many slows them:
  the planner sees that a chain of A100 + L4 + T4 cycles at the sum of its layers' paces
  (pricing every layer of the route at the node's own pace, or at the slower of own and
  reference pace, made slow nodes look as if the whole route ran at their speed and cost the
  planner 10-30% of the throughput its placements reach in simulation); r = mean_prompt /
  mean_output prompt tokens ride along with each decode token (prefill is chunked, so decode
  steps never wait behind a whole prompt).

Consistency promise (the simulator relies on it): `capacity_tokens_per_s(t, k)` times the
round trip above equals the requests resident on the node (tests/test_costmodel.py), and the
simulator, which chunks prefill to `max_prompt_tokens_per_step`, reaches ~98% of the Helix
placement's max-flow on the 24-GPU cluster (BENCHMARKS.md) when every resident may share one
step. `max_decode_batch` caps a step at `PIPELINE_MICROBATCH_FACTOR` own-pace batches
(`3 R k / L`, at most R): without a cap a route's residents clump into one convoy that visits the
stages one at a time (each node busy ~1/hops of the time); split into micro-batches they
pipeline. With the route-aware round trip the simulator runs the Helix placements of the three
paper clusters at 95-111% of their max-flow, and single-type baseline pipelines at up to ~155%
(the other L - k layers are priced at the cluster's mean pace; BENCHMARKS.md).
"""

from __future__ import annotations

import functools

from helix_jax.costmodel.links import LinkModel
from helix_jax.costmodel.steps import StepTimes

HOP_WAIT_FACTOR = 1.5  # steps per hop a decode token spends: ~half a step waiting, then its own
PIPELINE_MICROBATCH_FACTOR = 3  # decode batch cap per step, in own-pace batches (R k / L)


class CostModel(StepTimes, LinkModel):
    """Throughput and timing figures of one topology (see the module docstring)."""

    # ---- residency ----
    def resident_requests(self, gpu_type: str, num_layers_held: int) -> float:
        """Requests whose KV fits on a node at once (residence-weighted reservation)."""
        budget = self.kv_budget_token_layers(gpu_type, num_layers_held)
        return budget / (num_layers_held * self.workload.resident_kv_tokens)

    def own_pace_batch(self, gpu_type: str, num_layers_held: int, load: float = 1.0) -> int:
        """Decode sequences in one step at the node's own pace: a resident request visits this
        node once per round trip through ~L/k stages like it, so k/L of the residents share one
        batch; a node planned at `load` (a share of its capacity) keeps that share of them."""
        residents = self.resident_requests(gpu_type, num_layers_held)
        return max(1, int(load * residents * num_layers_held / self.model.num_layers))

    def _own_pace_layer_seconds(self, gpu_type: str, num_layers_held: int) -> float:
        """One layer step at the node's own pace (`own_pace_batch`)."""
        return self.batch_step_seconds(gpu_type, self.own_pace_batch(gpu_type, num_layers_held))

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
        return HOP_WAIT_FACTOR * (num_layers_held * own_layer_s + other_layers * self.reference_layer_seconds) + self.route_link_seconds

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
