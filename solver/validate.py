"""validate_placement: the planner's check of every placement it returns (and of placement files).

Sits next to the solver (placement -> **validate** -> scheduler): a Placement (helix_jax/placement.py,
plain data) is checked against its topology and the cost model (helix_jax/costmodel/, its
capacities), so neither of those two modules imports the other. The CLI checks loaded placement
files with it too.
"""

from __future__ import annotations

from typing import Any

from helix_jax.costmodel import CostModel
from helix_jax.errors import PlacementError
from helix_jax.placement import Placement
from helix_jax.topology import COORDINATOR

_REL_TOL = 1e-6
_ABS_TOL = 1e-6


def _over(value: float, limit: float) -> bool:
    return value > limit * (1 + _REL_TOL) + _ABS_TOL


def validate_placement(placement: Placement, topology: Any, cost_model: Any = None) -> None:
    """Raise PlacementError naming the first problem of `placement` on `topology`.

    Checks: ranges inside [0, L) and non-empty, at most the layers that fit in the node's memory
    (`memory_max_layers`; the planner itself stays within the tighter `max_layers`), every
    layer held by some node, flow edges between known endpoints obeying the hand-off rules,
    non-negative flows, conservation at every node, compute capacity c(type, k) per node, link
    capacity per edge, NIC capacity per node (node-to-node traffic), and the objective equal to
    the flow leaving the coordinator. `cost_model` defaults to `CostModel(topology)`.
    """
    if cost_model is None:
        cost_model = CostModel(topology, placement.workload)
    num_layers = topology.model.num_layers
    if placement.num_layers != num_layers:
        raise PlacementError(f"placement covers {placement.num_layers} layers but the model {topology.model.name} has {num_layers}")
    known = set(topology.node_names)
    covered = [False] * num_layers
    for node, (start, end) in placement.ranges.items():
        if node not in known:
            raise PlacementError(f"placement names node {node!r}, which the topology does not have")
        if not 0 <= start < end <= num_layers:
            raise PlacementError(f"node {node!r} holds [{start}, {end}), not a non-empty range inside [0, {num_layers})")
        gpu = topology.node(node).gpu
        top = cost_model.memory_max_layers(gpu)
        if end - start > top:
            raise PlacementError(f"node {node!r} ({gpu}) holds {end - start} layers; at most {top} fit in its memory")
        for layer in range(start, end):
            covered[layer] = True
    if not all(covered):
        missing = [i for i, held in enumerate(covered) if not held]
        raise PlacementError(f"no node holds layer(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}")

    inflow: dict[str, float] = {n: 0.0 for n in placement.ranges}
    outflow: dict[str, float] = {n: 0.0 for n in placement.ranges}
    nic_in: dict[str, float] = {n: 0.0 for n in placement.ranges}
    nic_out: dict[str, float] = {n: 0.0 for n in placement.ranges}
    source_total = sink_total = 0.0
    seen_edges: set[tuple[str, str]] = set()
    for edge in placement.flows:
        where = f"flow {edge.src} -> {edge.dst}"
        if (edge.src, edge.dst) in seen_edges:
            raise PlacementError(f"{where} is listed twice")
        seen_edges.add((edge.src, edge.dst))
        if not edge.tokens_per_s >= 0:
            raise PlacementError(f"{where} is negative or not a number ({edge.tokens_per_s})")
        for end_name in (edge.src, edge.dst):
            if end_name != COORDINATOR and end_name not in placement.ranges:
                raise PlacementError(f"{where}: {end_name!r} holds no layers in this placement")
        if edge.tokens_per_s <= _ABS_TOL:
            continue
        if not placement.can_hand_off(edge.src, edge.dst):
            raise PlacementError(
                f"{where} breaks the hand-off rules for ranges {placement.ranges.get(edge.src)} -> {placement.ranges.get(edge.dst)}"
            )
        link_cap = cost_model.link_tokens_per_s(edge.src, edge.dst)
        if _over(edge.tokens_per_s, link_cap):
            raise PlacementError(f"{where} carries {edge.tokens_per_s:.3f} tokens/s over a link of {link_cap:.3f} tokens/s")
        if edge.src == COORDINATOR:
            source_total += edge.tokens_per_s
        else:
            outflow[edge.src] += edge.tokens_per_s
        if edge.dst == COORDINATOR:
            sink_total += edge.tokens_per_s
        else:
            inflow[edge.dst] += edge.tokens_per_s
        if COORDINATOR not in (edge.src, edge.dst):
            nic_out[edge.src] += edge.tokens_per_s
            nic_in[edge.dst] += edge.tokens_per_s
    for node, (start, end) in placement.ranges.items():
        if abs(inflow[node] - outflow[node]) > _ABS_TOL + _REL_TOL * max(inflow[node], outflow[node]) * 10:
            raise PlacementError(f"flow is not conserved at node {node!r}: {inflow[node]:.6f} tokens/s in, {outflow[node]:.6f} out")
        capacity = cost_model.node_capacity_tokens_per_s(node, end - start)
        if _over(inflow[node], capacity):
            raise PlacementError(
                f"node {node!r} carries {inflow[node]:.3f} tokens/s over its capacity {capacity:.3f} tokens/s holding {end - start} layers"
            )
        nic_cap = cost_model.nic_tokens_per_s(node)
        if nic_cap is not None and _over(max(nic_in[node], nic_out[node]), nic_cap):
            raise PlacementError(
                f"node {node!r} moves {max(nic_in[node], nic_out[node]):.3f} tokens/s through a NIC of {nic_cap:.3f} tokens/s"
            )
    if abs(source_total - sink_total) > _ABS_TOL + 10 * _REL_TOL * source_total:
        raise PlacementError(f"{source_total:.6f} tokens/s leave the coordinator but {sink_total:.6f} return")
    if placement.flows and abs(placement.objective_tokens_per_s - source_total) > 1e-3 + 1e-6 * source_total:
        raise PlacementError(
            f"objective {placement.objective_tokens_per_s:.6f} tokens/s differs from the flow leaving the coordinator ({source_total:.6f})"
        )
