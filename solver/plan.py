"""Planner entry point: `plan` (topology -> Placement); `explain` (explain.py) is re-exported.

Sits at the solver's front door: topology + cost model -> **plan** -> Placement -> scheduler.

`plan(method="helix")` runs every phase below under ONE Deadline (deadline.py): each phase
starts only while time is left, takes its share of what is left, and hands on the best
placement and the lowest proven bound found so far; a few seconds stay reserved for the final
max-flow, so the wall time stays within the limit plus the solver's overshoot. Node classes
(classes.py) are found first; everything after grows with classes, not with nodes.
1. feasibility check (InfeasibleError naming what is missing);
2. start: greedy coverage (always), every baseline, then (no windows) deficit-driven local
   search from the best of them; the best true max-flow is the incumbent to beat;
3. bounds: the rectangle LP fix-point (milp.py, bisection.py), then the configuration LP of
   layer patterns (patterns.py), which also gives placements made of stages; where links may
   bind (several zones) and stages are > 2% from that bound, the link-blind MILP too: links
   only lower max-flow, so every such bound holds with links, and the smallest is reported;
4. without windows: bisection of the aggregated MILP with HiGHS from the best start, expansion
   of the counts to nodes and the true max-flow on blocks of identical nodes (classflow.py);
   where links the model did not see cost flow, repair.py swaps node classes and searches on
   the true max-flow. With slow links between regions (regions.py) the zone model's LP bound
   comes first, then the answer is the best placement giving each region one window of layers,
   so a token crosses regions only a few times (the bound holds for any placement);
5. the best placement found (incumbent.py keeps every candidate and the bound), validated,
   with `upper_bound_tokens_per_s`, `status` ("optimal" when within `rel_gap` of the bound;
   "time_limit" when the deadline cut a phase short), `extra["bound_source"]` and
   `extra["phases"]` (the phases that ran, and when).
Other methods return the baseline placement (baselines.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from helix_jax.costmodel import CostModel
from helix_jax.errors import ConfigError, InfeasibleError
from helix_jax.placement import Placement
from helix_jax.solver import bisection, heuristics, milp, patterns, regions, repair
from helix_jax.solver.baselines import BASELINES, FILLS_MEMORY, baseline_placement, baseline_ranges
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.deadline import Deadline
from helix_jax.solver.explain import CutElement, Explanation, explain  # noqa: F401  (re-exported)
from helix_jax.solver.feasible import check_feasible, within_cap  # noqa: F401  (re-exported)
from helix_jax.solver.incumbent import NUMERIC_GAP, Bound, Candidates, finish  # noqa: F401  (NUMERIC_GAP re-exported)
from helix_jax.solver.maxflow import import_cvxpy
from helix_jax.topology import Topology

log = logging.getLogger(__name__)

METHODS = ("helix",) + BASELINES
HEURISTIC_SHARE = 0.2  # of the time limit spent on the start (at most HEURISTIC_MAX_S)
HEURISTIC_MAX_S = 15.0
WINDOW_SHARE = 0.85  # of the time left after the zone LP for region windows (the rest: the zone MILP's bound)
ZONE_LP_SHARE = 0.4  # of the remaining time for the zone model's LP bound when windows are planned
BLIND_SHARE = 0.1  # of the time limit for the link-blind bound when links may bind
BLIND_MILP_GAP = 0.02  # the link-blind MILP runs only if stages and pattern bound are further apart
FIXPOINT_SHARE = 0.15  # of the remaining time for the link-blind LP fix-point
PATTERN_SHARE = 0.5  # of the remaining time for the pattern bound and stage placements (patterns.py)
PATTERN_BOUND_SHARE = 0.2  # ... for the pattern bound alone, when windows are the answer
FINAL_SHARE, FINAL_MAX_S = 0.05, 3.0  # kept back for the final load-spreading max-flow


def plan(
    topology: Topology,
    method: str = "helix",
    time_limit_s: float = 60.0,
    rel_gap: float = 1e-3,
    partial_inference: bool = True,
    seed: int = 0,
    cost_model: CostModel | None = None,
    region_windows: bool | None = None,
    deadline: Deadline | None = None,
) -> Placement:
    """Choose layer ranges for `topology` by `method` (see the module docstring).

    `region_windows`: confine each region to one block of layers (regions.py); None decides
    by the links (every inter-region link slow) and needs partial inference. `deadline`: the
    Deadline every phase shares (default: `time_limit_s` from now on the monotonic clock)."""
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
    deadline = deadline or Deadline(time_limit_s)
    return _plan_helix(topology, cost_model, deadline, rel_gap, partial_inference, seed, region_windows)


def _start(found: Candidates, tables, L: int, upper: float, deadline: Deadline, seed: int, local_search: bool = True) -> None:
    """Phase 2: greedy coverage (always, however little time is left), the baselines, then the
    deficit-driven local search from the best of them."""
    deadline.note("greedy")  # runs however little time is left: the answer of last resort
    greedy = heuristics.best_greedy(tables, L, upper)
    if greedy:
        found.consider("greedy", heuristics.improve_coverage(greedy, tables, L, deadline.share(0.1), seed))
    for name in BASELINES:
        if not deadline.enter(f"baseline:{name}"):
            break
        try:
            found.consider(name, baseline_ranges(found.topology, found.cost_model, name))
        except InfeasibleError:
            continue
    label = found.best_label()
    if label is not None and found.partial and local_search and deadline.enter("local-search"):
        found.consider("local-search", heuristics.raise_coverage(found.within[label][0], tables, L, deadline, seed, upper=upper))


def _plan_helix(
    topology: Topology, cost_model: CostModel, deadline: Deadline, rel_gap: float, partial_inference: bool, seed: int, region_windows: bool
) -> Placement:
    t0 = time.monotonic()
    import_cvxpy()  # the final load-spreading QP needs it: ~1 s, paid inside the limit, not after it

    limit_s = deadline.remaining_s()
    search = deadline.before_end(min(FINAL_SHARE * limit_s, FINAL_MAX_S))
    search.note("classes")
    classes = NodeClasses(topology, cost_model)
    L = topology.model.num_layers
    bound = Bound(milp.trivial_bound(topology, cost_model))
    found = Candidates(topology, cost_model, classes, partial_inference)
    tables = heuristics.node_tables(topology, cost_model)
    # with windows the answer comes from the window search, which makes its own start
    _start(found, tables, L, bound.value, search.share(HEURISTIC_SHARE, max_s=HEURISTIC_MAX_S), seed, local_search=not region_windows)

    # 3. bounds and MILP on aggregated counts; links that reach the smaller of their two nodes'
    #    best capacity (or the flow bound) never bind (classes.zones)
    blind = milp.PlacementModel(
        topology,
        cost_model,
        milp.make_groups(topology, cost_model, [list(topology.node_names)]),
        1,
        partial_inference,
        bound.value,
        classes,
    )
    if search.enter("lp-fixpoint"):
        bound.tighten(bisection.lp_fixpoint(blind, bound.value, search.share(FIXPOINT_SHARE)), "lp-fixpoint")
    blind_gap = 1.0
    if search.enter("patterns"):  # a bound that sees whole nodes, and (no windows) placements made of stages
        label = found.best_label()
        share = PATTERN_BOUND_SHARE if region_windows else PATTERN_SHARE
        covered, upper, stages = patterns.search(
            patterns.PatternPool(blind.groups, L),
            found.within[label][1] if label else 0.0,
            bound.value,
            search.share(share),
            rel_gap,
            seed,
            stages=not region_windows,
        )
        bound.tighten(upper, "patterns")
        blind_gap = 1 - covered / upper if upper > 0 and stages else 1.0
        found.consider("stages", stages)
    zones = classes.zones(bound.value)
    outcomes = []
    if len(zones) > 1 and blind_gap > BLIND_MILP_GAP and not region_windows and search.enter("link-blind-milp"):
        # links only lower a placement's max-flow, so the link-blind optimum bounds it too
        blind_outcome = bisection.solve_counts(
            blind, bound.value, deadline=search.share(1.0, max_s=BLIND_SHARE * limit_s), rel_gap=rel_gap, seed=seed
        )
        bound.tighten(blind_outcome.upper_bound, "link-blind-milp")
        outcomes.append(blind_outcome)
        if blind_outcome.counts:
            found.consider("link-blind", milp.expand_counts(blind.groups, blind_outcome.counts))
    model = blind
    if len(zones) > 1 and search.enter("zone-model"):
        model = milp.PlacementModel(
            topology, cost_model, milp.make_groups(topology, cost_model, zones), len(zones), partial_inference, bound.value, classes
        )
    window_plan = None
    if region_windows:
        # the link-aware bound first (the zone LP; ~20 s for ten zones of 1000 GPUs), then the windows
        if model is not blind and search.enter("zone-lp"):
            bound.tighten(bisection.lp_fixpoint(model, bound.value, search.share(ZONE_LP_SHARE)), "zone-lp")
        if search.enter("region-windows"):
            window_plan = regions.plan_windows(topology, cost_model, bound.value, search.share(WINDOW_SHARE), seed, classes)
            if window_plan is not None:
                found.consider("region-windows", window_plan.ranges)
    label = found.best_label()
    if search.enter("bisection"):
        start_counts = milp.counts_from_ranges(model, found.within[label][0]) if label else None
        outcome = bisection.solve_counts(
            model,
            bound.value,
            deadline=search.share(0.9),
            rel_gap=rel_gap,
            seed=seed,
            start_counts=start_counts,
            fixpoint_share=0.0 if region_windows else 0.2,
        )
        bound.tighten(outcome.upper_bound, "bisection")
        outcomes.append(outcome)
        if outcome.counts:
            _expand(found, model, outcome, search, seed)
    placement = finish(found, classes, bound, outcomes, zones, window_plan, deadline, search, rel_gap, seed)
    return dataclasses.replace(placement, solve_seconds=time.monotonic() - t0)


def _expand(found: Candidates, model: milp.PlacementModel, outcome: bisection.MilpOutcome, deadline: Deadline, seed: int) -> None:
    """Phase 4: counts -> concrete nodes; where the true max-flow falls short of the model's value
    (links the model did not see), swap node classes, then search on the true max-flow."""
    ranges = milp.expand_counts(model.groups, outcome.counts)
    found.consider("milp", ranges)
    if found.within["milp"][1] < outcome.model_value * (1 - 1e-6) and deadline.enter("repair"):
        args = (found.topology, found.cost_model, found.classes)
        swapped, _ = repair.swap_classes(*args, ranges, found.partial, deadline.share(0.3))
        repaired, _ = repair.improve_flow(*args, swapped, found.partial, deadline, seed)
        found.consider("milp+repair", repaired)
