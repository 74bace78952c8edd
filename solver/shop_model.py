"""The shop's MILP at one reference pace: milp.PlacementModel over price groups + cost and pace rows.

Owns: `PacedCostModel` (a cost model with the cluster-level pace fixed), `Pace`, `PaceGrid`
(the pace range of a pool, cut into intervals) and `ShopModel` (one MILP: least cost for a
target, or most coverage within a budget), plus small pool helpers. Sits inside the shop:
pool -> **shop_model (this file)** -> shop.py (the search over pace intervals) -> mix.
The formulation and why the pace matters: shop.py's docstring and docs/planner.md.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.sparse as sp

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import TopologyError
from helix_jax.solver import milp
from helix_jax.topology import COORDINATOR, Topology

PACE_INTERVALS = 4  # pace intervals between the fastest and the slowest type's own step
REL_TOL = 1e-6
NO_CUTOFF = 1e12  # a cost per hour no pool reaches


class PacedCostModel(CostModel):
    """A cost model of `topology` with the cluster-level pace and route link time fixed."""

    def __init__(self, topology: Topology, workload: WorkloadShape, reference_layer_seconds: float, route_link_seconds: float) -> None:
        super().__init__(topology, workload)
        self._reference_s, self._route_s = reference_layer_seconds, route_link_seconds

    @property
    def reference_layer_seconds(self) -> float:  # type: ignore[override]
        return self._reference_s

    @property
    def route_link_seconds(self) -> float:  # type: ignore[override]
        return self._route_s


def sub_topology(topology: Topology, names: list[str] | set[str], name: str | None = None) -> Topology:
    """`topology` restricted to the nodes `names` (a mix rented from a pool)."""
    keep = set(names)
    nodes = tuple(n for n in topology.nodes if n.name in keep)
    links = {k: v for k, v in topology.links.items() if all(e in keep or e == COORDINATOR for e in k)}
    types = {g: t for g, t in topology.gpu_types.items() if any(n.gpu == g for n in nodes)}
    return dataclasses.replace(topology, name=name or topology.name, nodes=nodes, links=links, gpu_types=types)


def check_pool(pool: Topology) -> None:
    """Every node of a pool needs a price."""
    for node in pool.nodes:
        if node.price_per_hour is None:
            raise TopologyError(f"node {node.name!r} has no price_per_hour; a pool for --shop needs a price on every node entry")


def mix_of(topology: Topology, names) -> dict[str, int]:
    """GPU type -> nodes of that type among `names`."""
    mix: dict[str, int] = {}
    for name in sorted(names):
        gpu = topology.node(name).gpu
        mix[gpu] = mix.get(gpu, 0) + 1
    return dict(sorted(mix.items()))


def cost_of(topology: Topology, names) -> float:
    return float(sum(topology.node(n).price_per_hour or 0.0 for n in names))


@dataclasses.dataclass(frozen=True)
class Pace:
    """One pace interval's capacities and rows (module docstring)."""

    cost_model: CostModel
    upper_s: float | None  # the mix's pace is at most this (None: no row)
    lower_s: float | None  # ... and at least this


class ShopModel:
    """The MILP of one pace: milp.PlacementModel over price groups, plus cost and pace rows."""

    def __init__(self, pool: Topology, pace: Pace, zones: list[list[str]], partial_inference: bool, prune_target: float) -> None:
        cm = pace.cost_model
        self.pool, self.cost_model = pool, cm
        groups, prices, slots = [], [], []
        for z, zone in enumerate(zones):
            by_key: dict[tuple[str, float], list[str]] = {}
            for name in zone:
                node = pool.node(name)
                by_key.setdefault((node.gpu, float(node.price_per_hour or 0.0)), []).append(name)
            for (gpu, price), names in by_key.items():
                table = tuple(cm.capacity_table(gpu))
                if table:
                    groups.append(milp.Group(gpu, z, tuple(names), table))
                    prices.append(price)
                    slots.append(cm.reference_slots(gpu))
        self.groups = groups
        self.model = milp.PlacementModel(pool, cm, groups, len(zones), partial_inference, prune_target)
        rects, lp, n = self.model.rects, self.model.lp, self.model.n
        rows = sp.csr_matrix(
            (np.ones(len(rects)), ([r.group for r in rects], np.arange(len(rects)))), shape=(len(groups), len(rects))
        )  # rented = rows @ n, per group
        self.cost = np.array(prices) @ rows  # [R] price of each rectangle's node
        top = np.array([float(s[0]) for s in slots])
        step = np.array([s[1] for s in slots])
        if pace.upper_s is not None:
            lp.rows([(n, ((top * (step - pace.upper_s)) @ rows).reshape(1, -1))], upper=0.0)
        if pace.lower_s is not None:
            lp.rows([(n, ((top * (step - pace.lower_s)) @ rows).reshape(1, -1))], lower=0.0)
        self.cost_row = lp.rows([(n, self.cost.reshape(1, -1))], upper=NO_CUTOFF)

    def cheapest(
        self,
        target: float,
        time_limit_s: float,
        seed: int,
        cutoff: float = math.inf,
        start: dict[str, tuple[int, int]] | None = None,
        rel_gap: float = REL_TOL,
    ) -> tuple[float | None, float, dict]:
        """(least cost found or None, proven lower bound on the least cost, counts). Only mixes
        cheaper than `cutoff` are searched (a bound of `cutoff`: none is; inf: no mix at all);
        `start`: ranges of a mix known to reach the target here (of any pace's model: a range
        this model prunes as dominated maps to its dominator)."""
        self.model.lp.set_row_bounds(self.cost_row, upper=cutoff if math.isfinite(cutoff) else NO_CUTOFF)
        warm = self.model.evaluate(milp.counts_from_ranges(self.model, start), target)[1] if start else None
        self.model.set_target(target, require=target)
        result = self.model.lp.solve(
            {self.model.n: self.cost}, maximize=False, time_limit_s=time_limit_s, rel_gap=rel_gap, seed=seed, start=warm
        )
        if result.status == "infeasible":
            return None, cutoff, {}
        bound = result.bound if result.bound is not None else 0.0
        if result.objective is None:
            return None, bound, {}
        return float(result.objective), min(bound, result.objective), self.model.counts_of(result.value(self.model.n))

    def most_flow(self, budget: float, time_limit_s: float, seed: int) -> milp.MilpOutcome:
        """milp.solve_counts with the cost row: the most coverage within `budget` per hour."""
        self.model.lp.set_row_bounds(self.cost_row, upper=budget if math.isfinite(budget) else NO_CUTOFF)
        upper = milp.trivial_bound(self.pool, self.cost_model)
        return milp.solve_counts(self.model, upper, time_limit_s=time_limit_s, rel_gap=1e-4, seed=seed)

    def rented(self, counts: dict) -> dict[str, tuple[int, int]]:
        return milp.expand_counts(self.groups, counts)


class PaceGrid:
    """The pace range of a pool and the (sure, bound) Paces of its intervals (module docstring)."""

    def __init__(self, pool: Topology, workload: WorkloadShape) -> None:
        self.pool, self.workload = pool, workload
        cm = CostModel(pool, workload)
        steps = sorted({cm.reference_slots(g)[1] for g in pool.gpu_types if cm.reference_slots(g)[0] > 0})
        self.steps = steps or [0.0]
        routes = [cm.route_link_seconds] + [
            CostModel(sub_topology(pool, [n.name for n in pool.nodes if n.gpu == g]), workload).route_link_seconds
            for g in sorted({n.gpu for n in pool.nodes})
        ]
        self.route_hi, self.route_lo = max(routes), min(routes)
        self.exact = len(self.steps) == 1  # the pace cannot vary: one interval, sure = bound

    def sure(self, upper_s: float) -> Pace:
        return Pace(PacedCostModel(self.pool, self.workload, upper_s, self.route_hi), None if self.exact else upper_s, None)

    def bound(self, lower_s: float, upper_s: float) -> Pace:
        return Pace(
            PacedCostModel(self.pool, self.workload, lower_s, self.route_lo),
            None if self.exact else upper_s,
            None if self.exact else lower_s,
        )

    def initial(self) -> list[tuple[float, float]]:
        if self.exact:
            return [(self.steps[0], self.steps[0])]
        grid = np.linspace(self.steps[0], self.steps[-1], PACE_INTERVALS + 1)
        return list(zip(grid[:-1], grid[1:]))
