"""Planner entry points: `plan` (topology -> Placement) and `explain` (why this throughput).

Sits at the solver's front door: topology + cost model -> **plan** -> Placement -> scheduler.

`plan(method="helix")` runs, within `time_limit_s`:
1. feasibility check (InfeasibleError naming what is missing);
2. start: greedy coverage, every baseline, then deficit-driven local search from the best of
   them (partial inference); the best true max-flow is the incumbent the MILP has to beat
   (and the answer if the MILP finds nothing better in time);
3. the aggregated MILP (milp.py): LP fixpoint bound, then bisection with HiGHS, proving an
   upper bound on the true optimum; where links may bind (several zones), the link-blind MILP
   is solved first too: links only lower max-flow, so its optimum is a link-aware bound as well,
   and the smaller of the two bounds is reported;
4. expansion of the counts to concrete nodes and the true max-flow (maxflow.py); if link
   limits the model does not see cost flow, a max-flow local search repairs the placement;
   With slow links between regions (regions.py) the answer is instead the best placement that
   gives each region one window of layers, so a token crosses regions only a few times; the
   bound is the link-aware one above (it holds for any placement, windows or not);
5. the best placement found, validated, with `upper_bound_tokens_per_s` and `status`
   ("optimal" when within `rel_gap` of the bound).
Other methods return the baseline placement (baselines.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

from helix_jax.costmodel import CostModel
from helix_jax.errors import ConfigError, InfeasibleError
from helix_jax.placement import Placement
from helix_jax.solver import heuristics, milp, regions
from helix_jax.solver.baselines import BASELINES, FILLS_MEMORY, baseline_placement
from helix_jax.solver.maxflow import max_flow, placement_with_flows
from helix_jax.topology import Topology

log = logging.getLogger(__name__)

METHODS = ("helix",) + BASELINES
HEURISTIC_SHARE = 0.2  # of the time limit spent on the start (at most HEURISTIC_MAX_S)
HEURISTIC_MAX_S = 15.0
WINDOW_SHARE = 0.75  # of the remaining time for region windows (the rest tightens the bound)
NUMERIC_GAP = 1e-5  # gaps below this are solver tolerance, reported as optimal
BLIND_SHARE = 0.1  # of the time limit for the link-blind bound when links may bind


def check_feasible(topology: Topology, cost_model: CostModel, fill_memory: bool = False) -> None:
    """Raise InfeasibleError when no composition of the nodes can hold every layer once, each
    node within `max_layers` (or, with `fill_memory`, within `memory_max_layers`: sp)."""
    model = topology.model
    limit = cost_model.memory_max_layers if fill_memory else cost_model.max_layers
    per_type = {}
    for node in topology.nodes:
        per_type.setdefault(node.gpu, [0, limit(node.gpu)])[0] += 1
    detail = ", ".join(f"{n} x {gpu} (max {top} layers each)" for gpu, (n, top) in sorted(per_type.items()))
    if all(top == 0 for _, top in per_type.values()):
        raise InfeasibleError(
            f"no GPU in this cluster can hold one layer of {model.name} "
            f"({model.weight_bytes_per_layer / 1e9:.2f} GB of weights per layer): {detail}")
    total = sum(n * top for n, top in per_type.values())
    if total < model.num_layers:
        hard = sum(cost_model.memory_max_layers(node.gpu) for node in topology.nodes)
        beyond = (f"; filling memory past that cap (--method sp) would fit {hard}"
                  if not fill_memory and hard >= model.num_layers else "")
        where = "with memory filled with weights" if fill_memory else "with weights in half of each GPU's memory"
        raise InfeasibleError(
            f"the cluster holds at most {total} of the {model.num_layers} layers of {model.name} "
            f"{where}: {detail}; add nodes or use a smaller model{beyond}")


def within_cap(topology: Topology, cost_model: CostModel, ranges: dict[str, tuple[int, int]]) -> bool:
    """Whether every node holds at most the planner's `max_layers` (the MILP's search space)."""
    return all(e - s <= cost_model.max_layers(topology.node(n).gpu) for n, (s, e) in ranges.items())


def plan(topology: Topology, method: str = "helix", time_limit_s: float = 60.0, rel_gap: float = 1e-3,
         partial_inference: bool = True, seed: int = 0, cost_model: CostModel | None = None,
         region_windows: bool | None = None) -> Placement:
    """Choose layer ranges for `topology` by `method` (see the module docstring).

    `region_windows`: confine each region to one block of layers (regions.py); None decides
    by the links (every inter-region link slow) and needs partial inference."""
    if method not in METHODS:
        raise ConfigError(f"unknown placement method {method!r}; choose one of {', '.join(METHODS)}")
    if not time_limit_s > 0:
        raise ConfigError(f"time limit must be positive, got {time_limit_s}")
    if not 0 <= rel_gap < 1:
        raise ConfigError(f"gap must be in [0, 1), got {rel_gap}")
    if region_windows and not partial_inference:
        raise ConfigError("region windows need partial inference")
    cost_model = cost_model or CostModel(topology)
    check_feasible(topology, cost_model, fill_memory=method in FILLS_MEMORY)
    if method != "helix":
        return baseline_placement(topology, cost_model, method, partial_inference)
    if region_windows is None:
        region_windows = partial_inference and regions.slow_regions(topology)
    return _plan_helix(topology, cost_model, time_limit_s, rel_gap, partial_inference, seed, region_windows)


def _plan_helix(topology: Topology, cost_model: CostModel, time_limit_s: float, rel_gap: float,
                partial_inference: bool, seed: int, region_windows: bool) -> Placement:
    t0 = time.monotonic()
    deadline = t0 + time_limit_s
    L = topology.model.num_layers
    trivial_bound = milp.trivial_bound(topology, cost_model)
    upper = trivial_bound

    # 2. start: heuristics and baselines
    candidates: dict[str, tuple[dict[str, tuple[int, int]], float]] = {}

    past_cap: dict[str, tuple[dict[str, tuple[int, int]], float]] = {}

    def consider(label: str, ranges: dict[str, tuple[int, int]] | None) -> None:
        """Record a candidate; one past max_layers (sp fills memory) cannot start the MILP or
        the local search, so it waits in `past_cap` for the final comparison."""
        if ranges:
            value = max_flow(topology, cost_model, ranges, partial_inference).value_tokens_per_s
            store = candidates if within_cap(topology, cost_model, ranges) else past_cap
            store[label] = (ranges, value)

    tables = heuristics.node_tables(topology, cost_model)
    budget = min(HEURISTIC_MAX_S, HEURISTIC_SHARE * time_limit_s)
    greedy = heuristics.best_greedy(tables, L, upper)
    if greedy:
        consider("greedy", heuristics.improve_coverage(greedy, tables, L, budget / 10, seed))
    for name in BASELINES:
        try:
            base = baseline_placement(topology, cost_model, name, partial_inference, balance=False)
            consider(name, base.ranges)
        except InfeasibleError:
            continue
    start_label = max(candidates, key=lambda k: candidates[k][1]) if candidates else None
    if start_label is not None and partial_inference:
        remaining_s = budget - (time.monotonic() - t0)
        if remaining_s > 0.05:
            consider("local-search", heuristics.raise_coverage(candidates[start_label][0], tables, L,
                                                               remaining_s, seed, upper=upper))
            start_label = max(candidates, key=lambda k: candidates[k][1])

    # 3. MILP on aggregated counts. The link-blind model's LP bound caps every edge's flow, so
    #    links at least that fast can never bind: zones are split only by slower links.
    one_zone = [list(topology.node_names)]
    blind = milp.PlacementModel(topology, cost_model, milp.make_groups(topology, cost_model, one_zone), 1,
                                partial_inference, upper)
    upper = milp.lp_fixpoint(blind, upper, t0 + 0.1 * time_limit_s + 1.0)
    zones = milp.find_zones(topology, cost_model, upper)
    if len(zones) > 1:
        # links only lower a placement's max-flow, so the link-blind optimum bounds it too; that
        # MILP proves fast where the zone model's bound stays loose (three regions: 276 vs 284)
        blind_outcome = milp.solve_counts(blind, upper, time_limit_s=BLIND_SHARE * time_limit_s, rel_gap=rel_gap,
                                          seed=seed)
        upper = min(upper, blind_outcome.upper_bound)
        if blind_outcome.counts:
            consider("link-blind", milp.expand_counts(blind.groups, blind_outcome.counts))
    groups = milp.make_groups(topology, cost_model, zones)
    model = blind if len(zones) == 1 else milp.PlacementModel(topology, cost_model, groups, len(zones),
                                                               partial_inference, upper)
    start_counts = None
    if start_label is not None:
        start_counts = milp.counts_from_ranges(model, candidates[start_label][0])
    window_plan = None
    if region_windows:
        window_plan = regions.plan_windows(topology, cost_model, upper, WINDOW_SHARE * (deadline - time.monotonic()),
                                           seed)
        if window_plan is not None:
            consider("region-windows", window_plan.ranges)
    remaining = max(0.5, deadline - time.monotonic())
    outcome = milp.solve_counts(model, upper, time_limit_s=0.9 * remaining, rel_gap=rel_gap, seed=seed,
                                start_counts=start_counts)
    milp_status = outcome.status
    if outcome.counts:
        ranges = milp.expand_counts(groups, outcome.counts)
        consider("milp", ranges)
        if candidates["milp"][1] < outcome.model_value * (1 - 1e-6):  # links the model did not see
            repair_s = max(0.5, deadline - time.monotonic())
            repaired, _ = heuristics.improve_flow(topology, cost_model, ranges, partial_inference, repair_s, seed)
            consider("milp+repair", repaired)

    candidates.update(past_cap)
    eligible = ["region-windows"] if "region-windows" in candidates else list(candidates)
    best_label = max(eligible, key=lambda k: (candidates[k][1], k == "milp"))
    best_ranges, best_value = candidates[best_label]
    bound = max(min(outcome.upper_bound, upper), best_value)
    status = "optimal" if best_value >= bound * (1 - max(rel_gap, NUMERIC_GAP)) - 1e-9 else (
        "time_limit" if milp_status in ("time_limit", "no_solution") else "feasible")
    if best_label in past_cap and best_value > outcome.upper_bound:
        status = "feasible"  # the bound covers placements within max_layers only
    extra = {
        "source": best_label,
        "candidates": {k: round(v, 6) for k, (_, v) in sorted(candidates.items())},
        "milp_model_value": outcome.model_value,
        "lp_bound": outcome.lp_bound,
        "trivial_bound": trivial_bound,
        "zones": len(zones),
        **({"region_windows": {r: list(w) for r, w in window_plan.windows.items()}} if window_plan else {}),
        "bisection_steps": [list(s) for s in outcome.steps],
        "gap": (bound - best_value) / bound if bound > 0 else 0.0,
        "seed": seed,
    }
    return placement_with_flows(topology, cost_model, best_ranges, "helix", partial_inference,
                                status=status, upper_bound_tokens_per_s=bound,
                                solve_seconds=time.monotonic() - t0, extra=extra)


# ----------------------------------------------------------------------------- explain


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


def explain(topology: Topology, placement: Placement, cost_model: CostModel | None = None,
            boost: float = 0.1) -> Explanation:
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
        cut.append(CutElement(data["kind"], data["name"], data["capacity"], data.get("flow", 0.0),
                              boosted.value_tokens_per_s - base.value_tokens_per_s))
    everything = max_flow(topology, cost_model, ranges, partial,
                          capacity_scale={arc: 1 + boost for arc in arcs})
    heights = {node: cost_model.node_capacity_tokens_per_s(node, end - start)  # any k that fits
               for node, (start, end) in ranges.items()}
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
