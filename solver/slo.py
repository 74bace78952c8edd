"""Latency-SLO planner: the most max-flow whose every flow path meets a round-trip or hop budget.

Owns: `plan_slo` (topology + limits -> Placement with explicit routes), its infeasibility check
(the smallest round trip / fewest hops any placement achieves) and the placement's SLO record
(`extra.routes`, `extra.kv_fraction`, `extra.slo`).

Sits at the solver's front door beside `plan.plan`: topology + cost model + limits ->
**plan_slo** -> Placement (ranges, flows, routes) -> scheduler (routes only along `extra.routes`).

Steps (docs/planner.md, "Latency SLOs"):
1. the unconstrained plan (`plan.plan`): its bound caps the SLO bound, its ranges are a candidate;
2. the aggregated path model (slo_model, slo_paths) over (GPU type, range, load level) items:
   column generation on the bound model, iterated on the clipping target from the unconstrained
   bound, gives the SLO upper bound; column generation on the search model, then the integer
   restricted master, gives item counts, expanded to concrete nodes;
3. for each candidate placement, the path model of its own nodes (load levels chosen by the
   integer master, flows by column generation with the levels fixed);
4. the best candidate, with each route's exact round trip checked against the limit.
"""

from __future__ import annotations

import math
import time

from helix_jax.costmodel import CostModel
from helix_jax.errors import ConfigError, InfeasibleError
from helix_jax.placement import FlowEdge, Placement
from helix_jax.solver import slo_model
from helix_jax.solver.slo_model import Limits
from helix_jax.solver.slo_paths import PathSearch
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import COORDINATOR, Topology

FIXPOINT_ROUNDS = 4


def check_limits(topology: Topology, cm: CostModel, limits: Limits) -> None:
    """InfeasibleError naming the smallest round trip (and fewest hops) any placement reaches
    when the limits are below them; ConfigError for a non-positive limit."""
    if limits.tpot_s is None and limits.max_hops is None:
        raise ConfigError("an SLO plan needs --slo-tpot-ms and/or --max-hops")
    if limits.tpot_s is not None and not (math.isfinite(limits.tpot_s) and limits.tpot_s > 0):
        raise ConfigError(f"--slo-tpot-ms must be a positive number, got {1e3 * limits.tpot_s:g}")
    if limits.max_hops is not None and limits.max_hops < 1:
        raise ConfigError(f"--max-hops must be at least 1, got {limits.max_hops}")
    items, sizes, _ = slo_model.aggregated_items(topology, cm)
    fastest, fewest = _fastest_route(items, sizes, topology.model.num_layers)
    if limits.max_hops is not None and limits.max_hops < fewest:
        raise InfeasibleError(f"--max-hops {limits.max_hops} is below the fewest hops any placement of {topology.name} needs: {fewest}")
    if limits.tpot_s is not None and limits.tpot_s < fastest:
        raise InfeasibleError(
            f"--slo-tpot-ms {1e3 * limits.tpot_s:g} is below the smallest round trip any "
            f"placement of {topology.name} achieves: {1e3 * fastest:.1f} ms (every hop at its "
            f"lightest planned load, {slo_model.LEVELS[0]:.0%} of capacity)"
        )


def _fastest_route(items, sizes, L) -> tuple[float, int]:
    """(least round trip, fewest hops) of one route, using at most N_g nodes of each group."""
    lightest = [it for it in items if it.level == slo_model.LEVELS[0]]
    best: dict[int, dict[tuple[int, ...], float]] = {0: {tuple([0] * len(sizes)): 0.0}}
    hops_at: dict[int, dict[tuple[int, ...], int]] = {0: {tuple([0] * len(sizes)): 0}}
    fastest, fewest = math.inf, 1 << 30
    for x in range(L):
        for used, t in best.get(x, {}).items():
            h = hops_at[x][used]
            for it in lightest:
                if not it.start <= x < it.end or used[it.group] >= sizes[it.group]:
                    continue
                nxt = used[: it.group] + (used[it.group] + 1,) + used[it.group + 1 :]
                tt = t + slo_model.hop_seconds(it, x, L, bound=False)
                if it.end == L:
                    fastest, fewest = min(fastest, tt), min(fewest, h + 1)
                    continue
                if tt < best.setdefault(it.end, {}).get(nxt, math.inf):
                    best[it.end][nxt] = tt
                hops_at.setdefault(it.end, {})
                hops_at[it.end][nxt] = min(hops_at[it.end].get(nxt, 1 << 30), h + 1)
    return fastest, fewest


def _concrete(topology, cm, ranges, limits, clip, deadline):
    """Best flows of a concrete placement under the limits: (value, routes, levels)."""
    items, sizes, groups = slo_model.concrete_items(topology, cm, ranges)
    search = PathSearch(items, sizes, topology.model.num_layers, limits, bound=False)
    search.generate(clip, deadline)
    counts = search.integer_counts(clip, max(1.0, deadline - time.monotonic()))
    if counts is None:
        return 0.0, [], {}, ranges
    result = search.generate(clip, deadline + 5.0, fixed=[float(c) for c in counts])
    levels = {groups[it.group][1][0]: it.level for it, c in zip(items, counts) if c > 0}
    routes = []
    for path, f in result.flows.items():
        hops = [(groups[items[i].group][1][0], x, items[i].end) for i, x in path]
        routes.append((hops, f))
    return result.value, routes, levels, ranges


def _spine(topology: Topology, cm: CostModel) -> dict[str, tuple[int, int]]:
    """A constructive candidate: the fastest GPU type's nodes in one chain from layer 0 (each at
    its max_layers), every other type tiling the remaining layers with its max_layers, its nodes
    dealt round robin over the tiles (parallel copies share a tile's flow)."""
    L = topology.model.num_layers
    by_gpu: dict[str, list[str]] = {}
    for node in topology.nodes:
        if cm.max_layers(node.gpu) > 0:
            by_gpu.setdefault(node.gpu, []).append(node.name)
    pace = {g: slo_model.layer_step_at_load(cm, g, cm.max_layers(g), 1.0) for g in by_gpu}
    order = sorted(by_gpu, key=lambda g: (pace[g], g))
    ranges, layer = {}, 0
    fast = order[0]
    k = cm.max_layers(fast)
    for name in by_gpu[fast]:
        if layer >= L:
            break
        ranges[name] = (min(layer, L - k), min(L, layer + k))
        layer = ranges[name][1]
    for gpu in order[1:] if layer < L else []:
        k = cm.max_layers(gpu)
        tiles = [(max(0, min(p, L - k)), min(L, p + k)) for p in range(layer, L, k)]
        for j, name in enumerate(by_gpu[gpu]):
            ranges[name] = tiles[j % len(tiles)]
    return ranges


def _rounded(items, sizes, counts) -> list[int]:
    """LP counts rounded within each group's size: floors first, then the largest remainders."""
    out = [int(c + 1e-6) for c in counts]
    left = list(sizes)
    for i, c in enumerate(out):
        left[items[i].group] -= c
    for i in sorted(range(len(items)), key=lambda i: -(counts[i] - out[i])):
        if counts[i] - out[i] > 1e-3 and left[items[i].group] > 0:
            out[i] += 1
            left[items[i].group] -= 1
    return out


def plan_slo(
    topology: Topology, limits: Limits, time_limit_s: float = 60.0, seed: int = 0, cost_model: CostModel | None = None
) -> Placement:
    """Maximise max-flow subject to every flow path meeting `limits` (module docstring)."""
    from helix_jax.solver.plan import plan

    t0 = time.monotonic()
    cm = cost_model or CostModel(topology)
    check_limits(topology, cm, limits)
    L = topology.model.num_layers
    free = plan(topology, time_limit_s=max(1.0, 0.2 * time_limit_s), seed=seed, cost_model=cm, region_windows=False)
    upper = free.upper_bound_tokens_per_s or free.objective_tokens_per_s
    deadline = t0 + time_limit_s

    items, sizes, groups = slo_model.aggregated_items(topology, cm)
    bound_search = PathSearch(items, sizes, L, limits, bound=True)
    slo_bound, clip = math.inf, upper
    for _ in range(FIXPOINT_ROUNDS):
        result = bound_search.generate(clip, t0 + 0.45 * time_limit_s)
        slo_bound = min(slo_bound, result.bound)
        if not result.bound < clip * (1 - 1e-3):
            break
        clip = result.bound
    search = PathSearch(items, sizes, L, limits, bound=False)
    clip = min(upper, slo_bound)
    relaxed = search.generate(clip, t0 + 0.55 * time_limit_s)
    candidates = {}
    tries = {"slo-lp-rounded": _rounded(items, sizes, relaxed.counts), "slo-milp": search.integer_counts(clip, 0.1 * time_limit_s)}
    for name, counts in tries.items():
        ranges, free_nodes = {}, {g: list(nodes) for g, (_, nodes) in enumerate(groups)}
        for it, c in sorted(zip(items, counts or []), key=lambda z: (z[0].group, -z[0].level, z[0].start)):
            for _ in range(min(c, len(free_nodes[it.group]))):
                ranges.setdefault(free_nodes[it.group].pop(0), (it.start, it.end))
        if ranges:
            candidates[name] = _concrete(topology, cm, ranges, limits, clip, max(time.monotonic() + 2.0, t0 + 0.8 * time_limit_s))
    candidates["fast-spine"] = _concrete(
        topology, cm, _spine(topology, cm), limits, clip, max(time.monotonic() + 2.0, t0 + 0.9 * time_limit_s)
    )
    candidates["unconstrained"] = _concrete(topology, cm, dict(free.ranges), limits, clip, max(time.monotonic() + 2.0, deadline))
    label = max(candidates, key=lambda k: candidates[k][0])
    value, routes, levels, ranges = candidates[label]
    if value <= 0:
        raise InfeasibleError(f"no placement of {topology.name} found with flow on paths within {limits.describe()}")
    bound = max(min(upper, slo_bound), value)
    return slo_placement(
        topology,
        cm,
        label,
        ranges,
        routes,
        levels,
        limits,
        bound,
        time.monotonic() - t0,
        {k: round(v[0], 6) for k, v in candidates.items()},
        free.objective_tokens_per_s,
    )


def slo_placement(topology, cm, label, held, routes, levels, limits, bound, seconds, candidates, free_value) -> Placement:
    """A validated Placement of the nodes the routes use, their flows and the SLO record."""
    from helix_jax.solver.plan import NUMERIC_GAP

    used = sorted({node for hops, _ in routes for node, _, _ in hops})
    ranges = {n: held[n] for n in used}  # nodes no route uses hold nothing
    edge: dict[tuple[str, str], float] = {}
    kept, records = [], []
    for hops, f in sorted(routes, key=lambda r: -r[1]):
        nodes = [COORDINATOR, *(h[0] for h in hops), COORDINATOR]
        for a, b in zip(nodes[:-1], nodes[1:]):
            edge[(a, b)] = edge.get((a, b), 0.0) + f
        kept.append((hops, f))
    value = sum(f for _, f in kept)
    for hops, f in kept:
        rt = slo_model.route_seconds(topology, cm, hops, levels, ranges)
        if limits.tpot_s is not None and rt > limits.tpot_s * (1 + 1e-9):
            raise InfeasibleError(f"internal: route round trip {1e3 * rt:.1f} ms exceeds the SLO")  # pragma: no cover
        records.append({"hops": [list(h) for h in hops], "tokens_per_s": f, "round_trip_ms": 1e3 * rt})
    status = "optimal" if value >= bound * (1 - max(1e-3, NUMERIC_GAP)) else "feasible"
    extra = {
        "source": label,
        "candidates": candidates,
        "workload": cm.workload.to_dict(),
        "slo": {
            "tpot_ms": None if limits.tpot_s is None else 1e3 * limits.tpot_s,
            "max_hops": limits.max_hops,
            "unconstrained_tokens_per_s": free_value,
            "max_round_trip_ms": max(r["round_trip_ms"] for r in records),
            "max_route_hops": max(len(r["hops"]) for r in records),
        },
        "routes": records,
        "kv_fraction": {n: levels[n] for n in used},
        "mean_hops": round(sum(f * len(h) for h, f in kept) / value, 4),
        "gap": (bound - value) / bound if bound > 0 else 0.0,
    }
    placement = Placement(
        topology_name=topology.name,
        num_layers=topology.model.num_layers,
        ranges=ranges,
        flows=tuple(FlowEdge(a, b, f) for (a, b), f in sorted(edge.items())),
        method="helix",
        objective_tokens_per_s=value,
        upper_bound_tokens_per_s=bound,
        partial_inference=True,
        status=status,
        solve_seconds=seconds,
        extra=extra,
    )
    validate_placement(placement, topology, cm)
    return placement
