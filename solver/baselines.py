"""Baseline placements for side-by-side comparison (../shared/HELIX.md section 5).

Sits beside the MILP: topology + cost model -> **baseline ranges** -> maxflow.py -> Placement.
Every baseline returns a validated Placement carrying its true max-flow.

* swarm: equal stages of `s` layers, `s` = the smallest max_layers among usable GPU types
  (e.g. 20 stages of 4 layers for LLaMA-2-70B with T4s); nodes, strongest first, join the
  stage with the least total throughput so far.
* petals: nodes, strongest first, take their maximum number of layers at the window whose
  current coverage is weakest (lowest minimum, then lowest sum, then leftmost).
* sp (separate pipelines, HELIX.md section 5): one pipeline per GPU type made of all its
  nodes, the way a plain pipeline-parallel engine serves one replica per GPU type. Such an
  engine fills memory with weights, so a node may hold up to `memory_max_layers` (weights
  beside KV room for one full-context request), not the planner's half-memory `max_layers`.
  Types whose nodes together cannot hold the model pool into one mixed pipeline, strongest
  first (unused if even the pool cannot). Layers are split as evenly as memory allows; the
  nodes of a pipeline are ordered by region (the coordinator's first), so it crosses each slow
  link at most once; pipelines are served independently (no hand-off between them), so their
  throughputs add.
  (This is the baseline of the paper's prototype: on the 24-GPU cluster an A100 pipeline of
  4 x 20 layers, an L4 pipeline of 8 x 10 and a T4 pipeline of 12 x 6-7; on the 42-GPU one
  the V100s, which cannot hold the model alone, pool with the single T4s.)
* homogeneous: nodes in type order (strongest type first) each take their maximum number of
  layers, filling one pipeline after another; the last node of a pipeline takes the rest.
"""

from __future__ import annotations

import time

from helix_jax.costmodel import CostModel, best_layer_rate
from helix_jax.errors import InfeasibleError
from helix_jax.placement import Placement
from helix_jax.solver.maxflow import placement_with_flows
from helix_jax.topology import Topology

BASELINES = ("swarm", "petals", "sp", "homogeneous")
FILLS_MEMORY = ("sp",)  # methods whose nodes may hold up to memory_max_layers, past max_layers


def _usable_nodes(topology: Topology, cost_model: CostModel) -> list[tuple[str, str, int]]:
    """(node, gpu, max_layers) for nodes that hold >= 1 layer, strongest (max k*c) first."""
    out = []
    for node in topology.nodes:
        top = cost_model.max_layers(node.gpu)
        if top >= 1:
            strength = best_layer_rate(cost_model.capacity_table(node.gpu))
            out.append((strength, node.name, node.gpu, top))
    out.sort(key=lambda x: (-x[0], x[1]))
    return [(name, gpu, top) for _, name, gpu, top in out]


def swarm_ranges(topology: Topology, cost_model: CostModel) -> dict[str, tuple[int, int]]:
    L = topology.model.num_layers
    nodes = _usable_nodes(topology, cost_model)
    if not nodes:
        raise InfeasibleError("swarm: no node can hold a single layer")
    stage_size = min(top for _, _, top in nodes)
    while True:
        num_stages = -(-L // stage_size)
        if num_stages <= len(nodes):
            break
        bigger = [top for _, _, top in nodes if top > stage_size]
        if not bigger:
            raise InfeasibleError(f"swarm: {len(nodes)} nodes cannot fill {num_stages} stages of {stage_size} layers")
        stage_size = min(bigger)
        nodes = [n for n in nodes if n[2] >= stage_size]
    bounds = [(i * stage_size, min(L, (i + 1) * stage_size)) for i in range(num_stages)]
    load = [0.0] * num_stages
    ranges = {}
    for name, gpu, _ in nodes:
        empty = [i for i in range(num_stages) if load[i] == 0.0]
        remaining = len(nodes) - len(ranges)
        # keep enough nodes for the stages still empty
        candidates = empty if len(empty) >= remaining else range(num_stages)
        stage = min(candidates, key=lambda i: (load[i], i))
        s, e = bounds[stage]
        ranges[name] = (s, e)
        load[stage] += cost_model.capacity_tokens_per_s(gpu, e - s)
    return ranges


def petals_ranges(topology: Topology, cost_model: CostModel) -> dict[str, tuple[int, int]]:
    L = topology.model.num_layers
    cover = [0.0] * L
    ranges = {}
    for name, gpu, top in _usable_nodes(topology, cost_model):
        k = min(top, L)
        start = min(range(L - k + 1), key=lambda s: (min(cover[s : s + k]), sum(cover[s : s + k]), s))
        ranges[name] = (start, start + k)
        height = cost_model.capacity_tokens_per_s(gpu, k)
        for j in range(start, start + k):
            cover[j] += height
    if min(cover) <= 0:
        raise InfeasibleError(f"petals: layers {[i for i, c in enumerate(cover) if c <= 0][:10]} stay uncovered")
    return ranges


def _split_evenly(num_layers: int, caps: list[int]) -> list[int]:
    """Layer counts summing to num_layers, as equal as the per-node caps allow (water-filling)."""
    counts = [0] * len(caps)
    left = num_layers
    open_idx = list(range(len(caps)))
    while left > 0 and open_idx:
        share = max(1, left // len(open_idx))
        for i in list(open_idx):
            give = min(share, caps[i] - counts[i], left)
            counts[i] += give
            left -= give
            if counts[i] >= caps[i]:
                open_idx.remove(i)
            if left == 0:
                break
    return counts


def sp_pipelines(topology: Topology, cost_model: CostModel) -> list[list[tuple[str, int, int]]]:
    """Pipelines as lists of (node, start, end): one per GPU type, plus one of the pooled types
    that cannot hold the model alone (see the module docstring)."""
    L = topology.model.num_layers
    strength = {name: i for i, (name, _, _) in enumerate(_usable_nodes(topology, cost_model))}
    region = {n.name: n.region or "" for n in topology.nodes}
    home = topology.coordinator.region or ""  # a pipeline starts in the coordinator's region
    by_gpu: dict[str, list[tuple[str, int]]] = {}
    for node in sorted(topology.nodes, key=lambda n: strength.get(n.name, len(strength))):
        top = cost_model.memory_max_layers(node.gpu)
        if top >= 1:
            by_gpu.setdefault(node.gpu, []).append((node.name, top))
    groups, pooled = [], []
    for members in by_gpu.values():  # strongest type first
        if sum(top for _, top in members) >= L:
            groups.append(members)
        else:
            pooled.extend(members)
    if pooled and sum(top for _, top in pooled) >= L:
        groups.append(pooled)
    if not groups:
        raise InfeasibleError("sp: the nodes cannot form even one pipeline holding the whole model")
    out = []
    for members in groups:
        members = sorted(members, key=lambda m: (region[m[0]] != home, region[m[0]], strength.get(m[0], len(strength))))
        counts = _split_evenly(L, [top for _, top in members])
        layer, stages = 0, []
        for (name, _), k in zip(members, counts):
            if k > 0:
                stages.append((name, layer, layer + k))
                layer += k
        out.append(stages)
    return out


def homogeneous_ranges(topology: Topology, cost_model: CostModel) -> dict[str, tuple[int, int]]:
    L = topology.model.num_layers
    nodes = _usable_nodes(topology, cost_model)
    order = list(dict.fromkeys(gpu for _, gpu, _ in nodes))
    nodes.sort(key=lambda n: (order.index(n[1]), n[0]))
    ranges, pipeline, layer = {}, {}, 0
    for name, _, top in nodes:
        k = min(top, L - layer)
        pipeline[name] = (layer, layer + k)
        layer += k
        if layer == L:
            ranges.update(pipeline)
            pipeline, layer = {}, 0
    if not ranges:
        raise InfeasibleError("homogeneous: the nodes cannot fill even one pipeline")
    return ranges


def baseline_ranges(topology: Topology, cost_model: CostModel, method: str) -> dict[str, tuple[int, int]]:
    """The layer ranges of a baseline (sp: all its pipelines' stages)."""
    if method == "swarm":
        return swarm_ranges(topology, cost_model)
    if method == "petals":
        return petals_ranges(topology, cost_model)
    if method == "homogeneous":
        return homogeneous_ranges(topology, cost_model)
    if method == "sp":
        return {name: (s, e) for stages in sp_pipelines(topology, cost_model) for name, s, e in stages}
    raise ValueError(f"unknown baseline {method!r}")


def baseline_placement(
    topology: Topology, cost_model: CostModel, method: str, partial_inference: bool = True, balance: bool = True
) -> Placement:
    """A validated baseline Placement with its true max-flow (`balance`: see placement_with_flows)."""
    t0 = time.monotonic()
    allowed = None
    if method == "sp":
        pipelines = sp_pipelines(topology, cost_model)
        ranges = {name: (s, e) for stages in pipelines for name, s, e in stages}
        allowed = {(a[0], b[0]) for stages in pipelines for a, b in zip(stages, stages[1:])}
    else:
        ranges = baseline_ranges(topology, cost_model, method)
    return placement_with_flows(
        topology,
        cost_model,
        ranges,
        method,
        partial_inference,
        status="baseline",
        solve_seconds=time.monotonic() - t0,
        allowed_edges=allowed,
        balance=balance,
    )
