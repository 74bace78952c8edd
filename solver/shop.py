"""Which GPUs to rent: the cheapest mix of a pool that reaches a max-flow, or the most for a budget.

Owns: the search for the best mix of a *pool* (a topology whose node entries give `count`, the
nodes one can rent, and `price_per_hour`) over pace intervals, its bounds, and the mix's own
placement. Sits beside
plan.py at the solver's front door: pool -> **shop** -> mix + Placement -> (rent) -> serve.
shop_model.py holds the MILP at one pace; shop_report.py adds the single-type comparison and
the Pareto frontier.

Model: the rectangles of milp.py, grouped by (GPU type, zone, price); the integer counts
n[group, start, k] are bounded by what the group offers, so the nodes rented from a group are
m_g = sum of its counts, at price_g each.
* target F (`shop(target_tokens_per_s=F)`): minimise sum_g price_g m_g subject to every layer
  covered to height F, heights clipped at F (z = F in milp.PlacementModel);
* budget B (`shop(budget_per_hour=B)`): maximise z subject to coverage >= z and
  sum_g price_g m_g <= B, by milp.solve_counts' bisection on the clipping target.
With partial inference and links that do not bind, max-flow = min coverage (HELIX.md 3b), so
the model is exact and HiGHS' dual bound proves the optimum (least cost, or most tokens/s).

The pace. A roofline node's capacity depends on the cluster it serves in: its round trip
prices the route's other layers at the cluster's reference pace, the mean layer step over
the rented nodes' layer slots (CostModel.reference_layer_seconds), so renting A100s makes a
T4 faster. That pace is a ratio of linear functions of m, so its range (the fastest to the
slowest type's own step) is cut into `PACE_INTERVALS` intervals [P_i, P_i+1], each solved twice:
* sure: capacities at P_i+1 (the slowest pace in the interval) and the row
  sum_g slots_g (s_g - P_i+1) m_g <= 0 (the mix's pace is at most P_i+1), so every solution
  reaches F at its own pace; the best is re-solved at its own pace while that keeps falling;
* bound: capacities at P_i (the fastest) for mixes whose pace lies in the interval; its dual
  bound holds for every mix there, so the best over intervals bounds the whole problem.
Explicit capacity tables ignore the pace (one interval; sure = bound). Route link time (a few
ms of a ~2 s round trip) is taken at its largest over the single-type sub-pools and the pool
for sure models and its smallest for bound models (exact when in-region latencies are uniform).
"""

from __future__ import annotations

import dataclasses
import math
import time

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import ConfigError, InfeasibleError
from helix_jax.placement import Placement
from helix_jax.solver import milp
from helix_jax.solver.maxflow import max_flow, placement_with_flows
from helix_jax.solver.shop_model import REL_TOL, PaceGrid, ShopModel, check_pool, cost_of, mix_of, sub_topology
from helix_jax.topology import Topology

PACE_ROUNDS = 4  # re-solves of a sure answer at its own pace
SHOP_GAP = 1e-3  # stop refining pace intervals when the bound is this close
MIN_PACE_WIDTH_S = 1e-5  # narrowest pace interval worth halving

__all__ = ["ShopResult", "cheapest_mix", "most_flow_mix", "shop", "check_pool", "cost_of", "mix_of", "sub_topology"]


@dataclasses.dataclass(frozen=True)
class ShopResult:
    mode: str  # "target" | "budget"
    target_tokens_per_s: float | None
    budget_per_hour: float | None
    mix: dict[str, int]  # GPU type -> nodes rented
    cost_per_hour: float
    cost_lower_bound_per_hour: float | None  # target mode: no mix reaching the target costs less
    placement: Placement  # of the mix, priced by the mix's own cost model
    upper_bound_tokens_per_s: float  # target mode: of this mix; budget mode: of any mix within budget
    topology: Topology  # the pool restricted to the mix
    seconds: float

    @property
    def tokens_per_dollar(self) -> float:
        cost = self.cost_per_hour
        return self.placement.objective_tokens_per_s * 3600.0 / cost if cost > 0 else math.inf


def _own_flow(pool: Topology, workload: WorkloadShape, ranges: dict, partial: bool) -> float:
    sub = sub_topology(pool, ranges)
    return max_flow(sub, CostModel(sub, workload), ranges, partial).value_tokens_per_s


def cheapest_mix(
    pool: Topology,
    target: float,
    workload: WorkloadShape,
    partial: bool = True,
    time_limit_s: float = 60.0,
    seed: int = 0,
    start: dict[str, tuple[int, int]] | None = None,
) -> tuple[dict | None, float, float]:
    """(ranges of the cheapest mix found reaching `target` at its own pace, or None; its cost;
    the proven least cost of any mix reaching it, inf when none can).

    1. incumbent: the sure model at the pool's own pace (mixes at most that slow), then re-solved
       at the incumbent's own pace, from it, while that lowers the cost;
    2. per pace interval, the bound model searches only mixes cheaper than the incumbent: if
       there are none the interval is closed, else its bound stays open and the sure model of the
       interval may improve the incumbent;
    3. the open interval with the weakest bound is halved until the gap closes or time runs out."""
    deadline = time.monotonic() + time_limit_s
    cm = CostModel(pool, workload)
    zones = milp.find_zones(pool, cm, milp.trivial_bound(pool, cm))
    grid = PaceGrid(pool, workload)
    best: dict | None = None
    best_cost = math.inf
    open_: list[tuple[float, float, float]] = []  # (bound, lo, hi)

    def left(share: float = 0.06) -> float:
        return max(0.5, min(share * time_limit_s, deadline - time.monotonic()))

    def consider(shop: ShopModel, counts: dict, cost: float | None) -> bool:
        nonlocal best, best_cost
        if cost is None or cost >= best_cost * (1 - REL_TOL):
            return False
        ranges = shop.rented(counts)
        if _own_flow(pool, workload, ranges, partial) < target * (1 - 1e-6):
            return False  # a link the model does not see binds
        best, best_cost = ranges, round(cost_of(pool, ranges), 9)
        return True

    def gap_open(low: float) -> bool:
        return low < best_cost * (1 - gap)

    if start and _own_flow(pool, workload, start, partial) >= target * (1 - 1e-6):  # a known mix
        best, best_cost = dict(start), round(cost_of(pool, start), 9)
    gap = REL_TOL if grid.exact else SHOP_GAP  # an exact model is solved to optimality
    # the pool's own pace is a middle one: its sure model solves fast and starts near the answer
    shop = ShopModel(pool, grid.sure(min(grid.steps[-1], max(grid.steps[0], cm.reference_layer_seconds))), zones, partial, target)
    cost, _, counts = shop.cheapest(target, left(0.1), seed, rel_gap=gap)
    consider(shop, counts, cost)
    for _ in range(PACE_ROUNDS if best is not None and not grid.exact else 0):  # 1. re-price at own pace
        pace = CostModel(sub_topology(pool, best), workload).reference_layer_seconds
        shop = ShopModel(pool, grid.sure(pace), zones, partial, target)
        cost, _, counts = shop.cheapest(target, left(), seed, cutoff=best_cost * (1 - gap), start=best, rel_gap=gap)
        if not consider(shop, counts, cost):
            break

    def examine(lo: float, hi: float) -> None:  # 2.
        cutoff = best_cost * (1 - gap)
        _, low, _ = ShopModel(pool, grid.bound(lo, hi), zones, partial, target).cheapest(target, left(), seed, cutoff=cutoff, rel_gap=gap)
        if gap_open(low):
            sure = ShopModel(pool, grid.sure(hi), zones, partial, target)
            cost, _, counts = sure.cheapest(target, left(), seed, cutoff=cutoff, rel_gap=gap)
            consider(sure, counts, cost)
        if math.isfinite(low):
            open_.append((min(low, best_cost), lo, hi))

    for lo, hi in grid.initial():
        examine(lo, hi)
    while open_ and time.monotonic() < deadline - 1.0:  # 3.
        open_.sort()
        low, lo, hi = open_[0]
        if not gap_open(low) or hi - lo <= MIN_PACE_WIDTH_S:
            break
        open_.pop(0)
        examine(lo, 0.5 * (lo + hi))
        examine(0.5 * (lo + hi), hi)
    lower = min([best_cost] + [low for low, _, _ in open_])
    return best, best_cost, lower


def most_flow_mix(
    pool: Topology, budget: float, workload: WorkloadShape, partial: bool = True, time_limit_s: float = 60.0, seed: int = 0
) -> tuple[dict | None, float, float]:
    """(ranges of the best mix found within `budget` per hour, its true max-flow at its own
    pace, the proven bound on any mix within the budget). Intervals as in `cheapest_mix`."""
    deadline = time.monotonic() + time_limit_s
    cm = CostModel(pool, workload)
    zones = milp.find_zones(pool, cm, milp.trivial_bound(pool, cm))
    grid = PaceGrid(pool, workload)
    best, best_flow = None, 0.0
    open_: list[tuple[float, float, float]] = []  # (-bound, lo, hi)

    def examine(lo: float, hi: float) -> None:
        nonlocal best, best_flow
        share = max(0.5, min(time_limit_s / 8, deadline - time.monotonic()))
        high = ShopModel(pool, grid.bound(lo, hi), zones, partial, math.inf).most_flow(budget, share, seed).upper_bound
        if high > best_flow * (1 + SHOP_GAP):
            shop = ShopModel(pool, grid.sure(hi), zones, partial, math.inf)
            outcome = shop.most_flow(budget, share, seed)
            if outcome.counts:
                ranges = shop.rented(outcome.counts)
                flow = _own_flow(pool, workload, ranges, partial)
                if flow > best_flow:
                    best, best_flow = ranges, flow
        open_.append((-high, lo, hi))

    for lo, hi in grid.initial():
        examine(lo, hi)
    while open_ and time.monotonic() < deadline - 1.0:
        open_.sort()
        high, lo, hi = -open_[0][0], open_[0][1], open_[0][2]
        if high <= best_flow * (1 + SHOP_GAP) or hi - lo <= MIN_PACE_WIDTH_S:
            break
        open_.pop(0)
        examine(lo, 0.5 * (lo + hi))
        examine(0.5 * (lo + hi), hi)
    upper = max([best_flow] + [-h for h, _, _ in open_])
    return best, best_flow, upper


def shop(
    pool: Topology,
    *,
    target_tokens_per_s: float | None = None,
    budget_per_hour: float | None = None,
    workload: WorkloadShape | None = None,
    partial_inference: bool = True,
    time_limit_s: float = 60.0,
    seed: int = 0,
    start: dict[str, tuple[int, int]] | None = None,
) -> ShopResult:
    """The cheapest mix reaching the target, or the most max-flow within the budget, and its
    placement (the mix re-planned by plan.plan at its own pace when that finds more). `start`:
    ranges of a mix known to reach the target (the incumbent to beat)."""
    from helix_jax.solver.plan import plan

    t0 = time.monotonic()
    if (target_tokens_per_s is None) == (budget_per_hour is None):
        raise ConfigError("--shop needs exactly one of --target-tokens-per-s and --budget-per-hour")
    for label, value in (("target tokens/s", target_tokens_per_s), ("budget per hour", budget_per_hour)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{label} must be a positive number, got {value}")
    check_pool(pool)
    workload = workload or WorkloadShape()
    share = 0.7 * time_limit_s
    if target_tokens_per_s is not None:
        ranges, cost, lower = cheapest_mix(pool, target_tokens_per_s, workload, partial_inference, share, seed, start)
        if ranges is None:
            _, reach, reach_bound = most_flow_mix(pool, math.inf, workload, partial_inference, share, seed)
            proven = "no mix of" if math.isinf(lower) else "within the time limit no mix was found in"
            raise InfeasibleError(
                f"{proven} {pool.name} reaches {target_tokens_per_s:g} tokens/s; the largest reachable "
                f"max-flow is {reach:.1f} tokens/s (renting everything worth renting; proven bound "
                f"{reach_bound:.1f})"
            )
    else:
        ranges, _, bound = most_flow_mix(pool, budget_per_hour, workload, partial_inference, share, seed)
        if ranges is None:
            cheapest = min(n.price_per_hour or 0.0 for n in pool.nodes)
            raise InfeasibleError(
                f"no mix of {pool.name} within {budget_per_hour:g} per hour serves the model "
                f"(the cheapest node costs {cheapest:g} per hour)"
            )
        cost, lower = round(cost_of(pool, ranges), 9), None
    names = sorted(ranges)
    mix_topology = sub_topology(pool, names, f"{pool.name}-mix")
    cm = CostModel(mix_topology, workload)
    placement = placement_with_flows(mix_topology, cm, ranges, "helix-shop", partial_inference, status="feasible")
    replanned = plan(
        mix_topology,
        time_limit_s=max(1.0, time_limit_s - (time.monotonic() - t0)),
        partial_inference=partial_inference,
        seed=seed,
        cost_model=cm,
    )
    if replanned.objective_tokens_per_s > placement.objective_tokens_per_s:
        placement = replanned
    mix_bound = max(replanned.upper_bound_tokens_per_s or 0.0, placement.objective_tokens_per_s)
    upper = mix_bound if target_tokens_per_s is not None else max(bound, placement.objective_tokens_per_s)
    extra = {**placement.extra, "shop": {"mix": mix_of(pool, names), "cost_per_hour": cost, "mix_upper_bound_tokens_per_s": mix_bound}}
    if target_tokens_per_s is not None:  # proven: no cheaper mix / no more max-flow within budget
        proven = cost - lower <= SHOP_GAP * cost + 1e-9
    else:
        proven = placement.objective_tokens_per_s >= upper * (1 - SHOP_GAP)
    placement = dataclasses.replace(
        placement,
        method="helix-shop",
        upper_bound_tokens_per_s=upper,
        extra=extra,
        status="optimal" if proven else "feasible",
        solve_seconds=time.monotonic() - t0,
    )
    return ShopResult(
        "target" if target_tokens_per_s is not None else "budget",
        target_tokens_per_s,
        budget_per_hour,
        mix_of(pool, names),
        cost,
        lower,
        placement,
        upper,
        mix_topology,
        time.monotonic() - t0,
    )
