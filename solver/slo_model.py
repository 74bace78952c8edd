"""SLO path model: what a flow path's hops cost in time, for `plan --slo-tpot-ms` / `--max-hops`.

Owns: `Limits` (round-trip and hop budgets), the load levels a node may be planned at and the
step time of a layer at a planned load, `Item` (a rectangle: a group of interchangeable nodes,
a layer range, a load level, its capacity and per-layer step times), the item sets of the
aggregated search and of a concrete placement, and the exact round trip of a concrete route.

Sits between the cost model and the path search in the data flow:
topology -> cost model -> **slo_model** -> slo_paths (column generation) -> slo.py -> Placement.

A hop that enters a node holding `[s, e)` at layer `x` costs
`HOP_WAIT_FACTOR * (e - x) * step + latency of the link into it` (plus the link back to the
coordinator after layer L), the cost model's round trip with the node's own step. The step is
taken at the node's *planned load*: a node planned at level `u` (a share of its capacity `c`)
keeps `u` of its resident requests (the placement caps its KV budget to that share, so the
simulator and scheduler hold it there), so its decode batch is `u` times the own-pace batch
and its step is shorter; it then carries at most `u * c`. Search models ("primal") take the
step at the level itself; bound models take the step of the next lower level (0: a batch of
one), so every load a node may really carry is covered by some bound item.
"""

from __future__ import annotations

import dataclasses
import math

from helix_jax.costmodel import HOP_WAIT_FACTOR, CostModel
from helix_jax.costmodel.links import latency_seconds
from helix_jax.topology import COORDINATOR, Topology

LEVELS = (0.25, 0.5, 0.75, 1.0)  # planned load as a share of a node's capacity
TIME_UNITS = 240  # grid of the round-trip budget in the pricing DP


@dataclasses.dataclass(frozen=True)
class Limits:
    """Budgets of a flow path: round trip (seconds) and/or number of hops (nodes visited)."""

    tpot_s: float | None = None
    max_hops: int | None = None

    def describe(self) -> str:
        parts = []
        if self.tpot_s is not None:
            parts.append(f"round trip <= {1e3 * self.tpot_s:g} ms")
        if self.max_hops is not None:
            parts.append(f"<= {self.max_hops} hops")
        return " and ".join(parts) or "none"


@dataclasses.dataclass(frozen=True)
class Item:
    group: int  # index into the search's groups (a concrete node is a group of one)
    start: int
    end: int
    level: float
    capacity: float  # tokens/s at this level: level x c(type, k)
    layer_s: float  # step per layer at this level (search models)
    layer_s_low: float  # step per layer at the next lower level (bound models)
    lat_in_s: tuple[float, float]  # (lowest, highest) latency of a link into the group's nodes
    lat_first_s: tuple[float, float]  # ... from the coordinator
    lat_last_s: tuple[float, float]  # ... back to the coordinator


def layer_step_at_load(cm: CostModel, gpu: str, k: int, level: float) -> float:
    """One layer step of a node of type `gpu` holding `k` layers, planned at `level` of its
    capacity: the own-pace batch scaled by `level` (at least one sequence)."""
    return cm.batch_step_seconds(gpu, cm.own_pace_batch(gpu, k, level))


def _latencies(topology: Topology, nodes: tuple[str, ...]) -> tuple[tuple[float, float], ...]:
    into = [latency_seconds(topology.link(a, b)) for b in nodes for a in topology.node_names if a != b]
    first = [latency_seconds(topology.link(COORDINATOR, b)) for b in nodes]
    last = [latency_seconds(topology.link(b, COORDINATOR)) for b in nodes]
    into = into or [0.0]
    return (min(into), max(into)), (min(first), max(first)), (min(last), max(last))


def items_for(
    topology: Topology, cm: CostModel, groups: list[tuple[str, tuple[str, ...]]], ranges: list[list[tuple[int, int]]]
) -> list[Item]:
    """Items of `groups` ((gpu, nodes)): every range of `ranges[g]` at every load level."""
    out = []
    for g, (gpu, nodes) in enumerate(groups):
        lat_in, lat_first, lat_last = _latencies(topology, nodes)
        for start, end in ranges[g]:
            k = end - start
            full = cm.capacity_tokens_per_s(gpu, k)
            steps = [layer_step_at_load(cm, gpu, k, u) for u in (0.0,) + LEVELS]
            for j, u in enumerate(LEVELS):
                out.append(Item(g, start, end, u, u * full, steps[j + 1], steps[j], lat_in, lat_first, lat_last))
    return out


def aggregated_items(topology: Topology, cm: CostModel) -> tuple[list[Item], list[int], list[tuple]]:
    """Items over (GPU type) groups with every start and k up to `max_layers`; group sizes."""
    by_gpu: dict[str, list[str]] = {}
    for node in topology.nodes:
        if cm.max_layers(node.gpu) > 0:
            by_gpu.setdefault(node.gpu, []).append(node.name)
    groups = [(gpu, tuple(nodes)) for gpu, nodes in sorted(by_gpu.items())]
    L = topology.model.num_layers
    ranges = [[(s, s + k) for k in range(1, cm.max_layers(gpu) + 1) for s in range(L - k + 1)] for gpu, _ in groups]
    return items_for(topology, cm, groups, ranges), [len(nodes) for _, nodes in groups], groups


def concrete_items(topology: Topology, cm: CostModel, ranges: dict[str, tuple[int, int]]) -> tuple[list[Item], list[int], list[tuple]]:
    """Items of a concrete placement: each node its own group of one, its range at every level."""
    names = sorted(ranges)
    groups = [(topology.node(n).gpu, (n,)) for n in names]
    return items_for(topology, cm, groups, [[ranges[n]] for n in names]), [1] * len(names), groups


def hop_seconds(item: Item, entry: int, num_layers: int, bound: bool) -> float:
    """Time of a hop entering `item` at layer `entry` (bound: lowest step and latencies)."""
    side = 0 if bound else 1
    step = item.layer_s_low if bound else item.layer_s
    lat = item.lat_first_s[side] if entry == 0 else item.lat_in_s[side]
    if item.end == num_layers:
        lat += item.lat_last_s[side]
    return HOP_WAIT_FACTOR * (item.end - entry) * step + lat


def route_seconds(
    topology: Topology, cm: CostModel, hops: list[tuple[str, int, int]], levels: dict[str, float], ranges: dict[str, tuple[int, int]]
) -> float:
    """Exact round trip of a concrete route ((node, entry, end) hops) under the planned levels."""
    total, prev = 0.0, COORDINATOR
    for node, entry, end in hops:
        start, stop = ranges[node]
        step = layer_step_at_load(cm, topology.node(node).gpu, stop - start, levels[node])
        total += HOP_WAIT_FACTOR * (end - entry) * step + latency_seconds(topology.link(prev, node))
        prev = node
    return total + latency_seconds(topology.link(prev, COORDINATOR))


def time_units(seconds: float, limits: Limits, bound: bool) -> int:
    """Grid units of a hop's time: rounded up for search models (every path found is feasible),
    down for bound models (every feasible path is found)."""
    if limits.tpot_s is None:
        return 0
    x = seconds / limits.tpot_s * TIME_UNITS
    return int(math.floor(x + 1e-9)) if bound else int(math.ceil(x - 1e-9))
