"""Why a placement serves what it serves: a minimum cut, and what more capacity would gain.

Sits after planning: topology + Placement -> **explain** -> Explanation (the `explain` command's
table). It works on the node-level max-flow graph (maxflow.py), since the cut names nodes and
links one by one. Re-exported by plan.py, where it used to live.
"""

from __future__ import annotations

import dataclasses
import math

from helix_jax.costmodel import CostModel
from helix_jax.errors import ConfigError
from helix_jax.placement import Placement
from helix_jax.solver import heuristics
from helix_jax.solver.maxflow import max_flow
from helix_jax.topology import Topology


@dataclasses.dataclass(frozen=True)
class CutElement:
    kind: str  # compute | link | nic_in | nic_out
    name: str  # node name, or "src->dst" for a link
    capacity_tokens_per_s: float
    flow_tokens_per_s: float
    gain_tokens_per_s: float  # throughput gained by raising this element alone by `boost`


@dataclasses.dataclass(frozen=True)
class Explanation:
    throughput_tokens_per_s: float
    upper_bound_tokens_per_s: float | None
    boost: float
    cut: tuple[CutElement, ...]  # a minimum cut: what saturates
    bottleneck_layers: tuple[int, ...]  # layers with the least total capacity
    layer_capacity_tokens_per_s: tuple[float, ...]  # total capacity of the nodes holding each layer
    gain_all_cut_tokens_per_s: float  # raising the whole cut by `boost`


def explain(topology: Topology, placement: Placement, cost_model: CostModel | None = None, boost: float = 0.1) -> Explanation:
    """Which nodes and links saturate (a minimum cut) and what +`boost` on each would gain."""
    if not (math.isfinite(boost) and boost > 0):
        raise ConfigError(f"boost must be a positive number (0.1 = +10%), got {boost}")
    cost_model = cost_model or CostModel(topology)
    ranges, partial = placement.ranges, placement.partial_inference
    base = max_flow(topology, cost_model, ranges, partial)
    graph, side = base.graph, base.cut_source_side
    arcs = [(u, v) for u, v in graph.edges if u in side and v not in side and graph[u][v]["capacity"] > 0]
    cut = []
    for u, v in arcs:
        data = graph[u][v]
        boosted = max_flow(topology, cost_model, ranges, partial, capacity_scale={(u, v): 1 + boost})
        cut.append(
            CutElement(
                data["kind"], data["name"], data["capacity"], data.get("flow", 0.0), boosted.value_tokens_per_s - base.value_tokens_per_s
            )
        )
    everything = max_flow(topology, cost_model, ranges, partial, capacity_scale={arc: 1 + boost for arc in arcs})
    heights = {
        node: cost_model.node_capacity_tokens_per_s(node, end - start)  # any k that fits
        for node, (start, end) in ranges.items()
    }
    cover = heuristics.stacked(ranges, heights, topology.model.num_layers)
    low = min(cover)
    cut.sort(key=lambda c: (-c.gain_tokens_per_s, c.kind, c.name))
    return Explanation(
        throughput_tokens_per_s=base.value_tokens_per_s,
        upper_bound_tokens_per_s=placement.upper_bound_tokens_per_s,
        boost=boost,
        cut=tuple(cut),
        bottleneck_layers=tuple(i for i, c in enumerate(cover) if c <= low * (1 + 1e-9)),
        layer_capacity_tokens_per_s=tuple(cover),
        gain_all_cut_tokens_per_s=everything.value_tokens_per_s - base.value_tokens_per_s,
    )
