"""The helix placement MILP: aggregated rectangle counts, clipped heights, a bound that proves.

Sits inside the solver: topology + cost model -> **MILP (this file)** -> layer ranges ->
maxflow.py (true flow) -> Placement. plan.py drives it; heuristics.py supplies the start.

Formulation (../shared/HELIX.md section 3b). Interchangeable nodes (same GPU type, same
*zone*) form a group g; a rectangle r = (g, start, k) stands for "a node of g holds
[start, start+k)", with height c_g(k). Integer n_r counts how many nodes of g hold it,
`sum_r n_r <= |g|`. For a target T every height is clipped to h_r = min(c_g(k), T): no node
can carry more than the whole flow, so clipping loses nothing for any F <= T, and it makes the
LP relaxation tight (one-layer rectangles no longer look huge).

* Partial inference (default): max-flow = min layer coverage when links do not bind, so
  maximise z subject to `sum_{r covers l} h_r n_r >= z` for every layer l.
* No partial inference: a flow f_r <= h_r n_r per rectangle and conservation at each layer
  boundary (flow ending at b = flow starting at b; source at 0, sink at L).
* Zones: nodes joined by links too slow to be ignored are split into zones (components of
  the links whose capacity reaches the trivial bound T0, which can never bind). With more than
  one zone the layer flow is tracked per zone, a[zone, l], and moves between zones only at
  boundaries where some node of the sending zone ends, bounded by the link capacity times the
  number of node pairs (counted linearly on either side) and by the nodes' heights, and in
  total over all boundaries by the summed capacity of the links from one zone to the other
  (the zone-to-zone cut: each crossing uses one of those links).
  Coordinator links bound the flow entering at layer 0 and leaving at L the same way.

Every constraint is a relaxation of the true node-level max-flow, so the model optimum (and the
MILP dual bound) is a valid upper bound on any placement's throughput. The incumbent is the
true max-flow of the expanded placement, computed afterwards.

Solution method (`solve_counts`, bisection.py): T0 = trivial bound; T <- LP(T) until it stops
falling (each LP value is an upper bound since LP(T) >= z*(T) >= min(F*, T)); then bisection on T
between the incumbent and that bound, each step a HiGHS feasibility question "cover every layer
to height T" (infeasible proves F* < T), with a maximisation from the incumbent when it runs out
of time. The zone rows live in milp_zones.py.

Size: groups x (rectangles per group) columns and O(zones^2 x L) rows, whatever the number of
nodes (a group of 300 T4s is one integer per rectangle, at most 300). The model is assembled
from sparse blocks (highs_run.LinearModel): a new target only rescales the coverage blocks.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict

import numpy as np
import scipy.sparse as sp

from helix_jax.costmodel import CostModel, best_layer_rate
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.highs_run import HighsResult, LinearModel
from helix_jax.topology import Topology

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Group:
    gpu: str
    zone: int
    nodes: tuple[str, ...]
    capacities: tuple[float, ...]  # c(gpu, k) for k = 1..max_layers


@dataclasses.dataclass(frozen=True)
class Rect:
    group: int
    start: int
    num_layers: int
    capacity: float  # c(gpu, k), unclipped

    @property
    def end(self) -> int:
        return self.start + self.num_layers


def trivial_bound(topology: Topology, cost_model: CostModel) -> float:
    """sum over nodes of max_k k*c(type, k), divided by L: no placement can exceed it."""
    total = 0.0
    for node in topology.nodes:
        total += best_layer_rate(cost_model.capacity_table(node.gpu))
    return total / topology.model.num_layers


def find_zones(topology: Topology, cost_model: CostModel, fast_tokens_per_s: float) -> list[list[str]]:
    """Components of the nodes joined (both ways) by links of at least `fast_tokens_per_s`."""
    parent = {n: n for n in topology.node_names}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    names = topology.node_names
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if min(cost_model.link_tokens_per_s(a, b), cost_model.link_tokens_per_s(b, a)) >= fast_tokens_per_s:
                parent[root(a)] = root(b)
    components: dict[str, list[str]] = defaultdict(list)
    for n in names:
        components[root(n)].append(n)
    return sorted(components.values(), key=lambda c: names.index(c[0]))


def make_groups(topology: Topology, cost_model: CostModel, zones: list[list[str]]) -> list[Group]:
    groups = []
    for z, zone in enumerate(zones):
        by_gpu: dict[str, list[str]] = defaultdict(list)
        for n in zone:
            by_gpu[topology.node(n).gpu].append(n)
        for gpu, nodes in sorted(by_gpu.items()):
            table = tuple(cost_model.capacity_table(gpu))
            if table:
                groups.append(Group(gpu, z, tuple(nodes), table))
    return groups


def dominant_min_layers(group: Group, target: float) -> int:
    """Smallest k worth a rectangle when heights are clipped at `target` or below: a k whose
    c(k) already reaches the target is covered, at the same clipped height, by the widest such
    k (placed at the same start, or flush with layer L), so narrower ones are dominated."""
    reaching = [k for k, c in enumerate(group.capacities, start=1) if c >= target]
    return max(reaching) if reaching else 1


def make_rects(groups: list[Group], num_layers: int, prune_target: float = float("inf")) -> list[Rect]:
    return [
        Rect(g, s, k, c)
        for g, group in enumerate(groups)
        for k, c in enumerate(group.capacities, start=1)
        if k >= dominant_min_layers(group, prune_target)
        for s in range(num_layers - k + 1)
    ]


@dataclasses.dataclass(frozen=True)
class Selectors:
    """0/1 matrices [L + 1 boundaries or layers, R rectangles]."""

    covers: sp.csr_matrix  # row l: rectangles holding layer l (= may receive at boundary l, partial)
    ends: sp.csr_matrix  # row b: rectangles ending at boundary b
    starts: sp.csr_matrix  # row b: rectangles starting at b


def selectors(rects: list[Rect], num_layers: int) -> Selectors:
    def rows(spans) -> sp.csr_matrix:
        lengths = np.array([b - a for a, b in spans], dtype=int)
        ri = np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, dtype=int)
        ci = np.repeat(np.arange(len(spans)), lengths)
        return sp.csr_matrix((np.ones(len(ri)), (ri, ci)), shape=(num_layers + 1, len(spans)))

    return Selectors(
        rows([(r.start, r.end) for r in rects]), rows([(r.end, r.end + 1) for r in rects]), rows([(r.start, r.start + 1) for r in rects])
    )


class PlacementModel:
    """The MILP for one topology (module docstring) on highs_run.LinearModel; the clipping target T
    enters as the heights `h` of every coverage block and the bounds of z (`set_target`)."""

    def __init__(
        self,
        topology: Topology,
        cost_model: CostModel,
        groups: list[Group],
        num_zones: int,
        partial_inference: bool,
        prune_target: float = float("inf"),
        classes: NodeClasses | None = None,
    ) -> None:
        """`prune_target`: the largest clipping target this model will be solved at; rectangles
        dominated at every target up to it are left out (`dominant_min_layers`). `classes`: the
        topology's node classes (built here if not given; they size the zone links)."""
        self.L = L = topology.model.num_layers
        self.groups = groups
        self.prune_target = prune_target
        self.rects = rects = make_rects(groups, L, prune_target if partial_inference else float("inf"))
        self.partial_inference = partial_inference
        self.index = {(r.group, r.start, r.num_layers): i for i, r in enumerate(rects)}
        self.capacities = np.array([r.capacity for r in rects])
        self.h = self.capacities.copy()  # [R] heights clipped at the current target
        self.lp_seconds = 0.0  # the longest LP solve so far: HiGHS's MIP cannot stop before its root LP
        self.mip_floor_s = 0.0  # the longest MIP run past its time limit (bisection.py): the root can stall
        num_r = len(rects)
        lp = self.lp = LinearModel()
        self.n = lp.var(num_r, 0.0, np.array([float(len(groups[r.group].nodes)) for r in rects]), integer=True)
        self.z = lp.var(1)
        self.objective = {self.z: 1.0}
        self.sel = sel = selectors(rects, L)
        group_rows = sp.csr_matrix((np.ones(num_r), ([r.group for r in rects], np.arange(num_r))), shape=(len(groups), num_r))
        lp.rows([(self.n, group_rows)], upper=[float(len(g.nodes)) for g in groups])
        if num_zones > 1:
            from helix_jax.solver.milp_zones import add_zone_rows

            add_zone_rows(self, num_zones, classes or NodeClasses(topology, cost_model))
        elif partial_inference:
            lp.rows([(self.n, self.scaled(sel.covers[:L])), (self.z, -np.ones((L, 1)))], lower=0.0)
        else:
            f = lp.var(num_r)
            eye = sp.identity(num_r, format="csr")
            lp.rows([(f, eye), (self.n, self.scaled(-eye))], upper=0.0)
            lp.rows([(f, sp.vstack([sel.starts[0:1], sel.ends[L : L + 1]])), (self.z, -np.ones((2, 1)))], 0.0, 0.0)
            lp.rows([(f, sel.ends[1:L] - sel.starts[1:L])], 0.0, 0.0)

    def scaled(self, selector: sp.csr_matrix):
        """A block whose coefficients are `selector` times the current heights h (per column)."""
        return lambda: selector @ sp.diags(self.h)

    # ---- solving ----
    def set_target(self, target: float, require: float = 0.0) -> None:
        """Clip heights at `target`, bound z <= target and demand z >= `require`."""
        self.h[:] = np.minimum(self.capacities, target)
        lo, hi = self.lp.bounds()
        lo[self.z.cols], hi[self.z.cols] = min(require, target), target

    def solve(
        self, time_limit_s: float, rel_gap: float = 1e-4, seed: int = 0, start: np.ndarray | None = None, relax: bool = False
    ) -> HighsResult:
        """Maximise z at the current target."""
        return self.lp.solve(self.objective, maximize=True, time_limit_s=time_limit_s, rel_gap=rel_gap, seed=seed, start=start, relax=relax)

    def lp_value(self, target: float, time_limit_s: float = 60.0) -> float:
        """The LP relaxation's optimum at `target` (an upper bound), or `target` if cut short."""
        self.set_target(target)
        result = self.solve(time_limit_s, relax=True)
        self.lp_seconds = max(self.lp_seconds, result.seconds)
        return result.objective if result.objective is not None and result.status == "optimal" else target

    def counts_vector(self, counts: dict[Rect, int]) -> np.ndarray:
        x = np.zeros(len(self.rects))
        for rect, c in counts.items():
            x[self.index[(rect.group, rect.start, rect.num_layers)]] = c
        return x

    def counts_of(self, n_value: np.ndarray) -> dict[Rect, int]:
        return {self.rects[i]: int(round(v)) for i, v in enumerate(n_value) if round(v) > 0}

    def evaluate(self, counts: dict[Rect, int], target: float, time_limit_s: float = 30.0) -> tuple[float, np.ndarray | None]:
        """Model value z of fixed `counts` with heights clipped at `target` (an LP), and the full
        column assignment, usable as a MILP start at that target."""
        self.set_target(target)
        lo, hi = self.lp.bounds()
        saved = lo[self.n.cols].copy(), hi[self.n.cols].copy()
        lo[self.n.cols] = hi[self.n.cols] = self.counts_vector(counts)
        try:
            result = self.solve(time_limit_s, relax=True)
        finally:
            lo[self.n.cols], hi[self.n.cols] = saved
        if result.objective is None:
            return 0.0, None
        return float(result.objective), result.x


def expand_counts(groups: list[Group], counts: dict[Rect, int]) -> dict[str, tuple[int, int]]:
    """Concrete ranges: the nodes of each group, in name order, take its rectangles by start."""
    ranges: dict[str, tuple[int, int]] = {}
    used = [0] * len(groups)
    for rect in sorted(counts, key=lambda r: (r.group, r.start, r.num_layers)):
        nodes = groups[rect.group].nodes
        for node in nodes[used[rect.group] : used[rect.group] + counts[rect]]:
            ranges[node] = (rect.start, rect.end)
        used[rect.group] += counts[rect]
    return ranges


def counts_from_ranges(model: PlacementModel, ranges: dict[str, tuple[int, int]]) -> dict[Rect, int]:
    """Counts of `ranges` in `model`'s rectangles (a pruned rectangle maps to its dominator)."""
    groups, num_layers = model.groups, model.L
    group_of = {n: g for g, group in enumerate(groups) for n in group.nodes}
    by_key = {(r.group, r.start, r.num_layers): r for r in model.rects}
    counts: dict[Rect, int] = defaultdict(int)
    for node, (s, e) in ranges.items():
        if node not in group_of:
            continue
        g, k = group_of[node], e - s
        if (g, s, k) not in by_key:  # dominated: widen to the dominating width
            k = dominant_min_layers(groups[g], model.prune_target)
            s = min(s, num_layers - k)
        counts[by_key[(g, s, k)]] += 1
    return dict(counts)


def __getattr__(name: str):
    """The solving functions live in bisection.py (which imports this module)."""
    if name in ("lp_fixpoint", "solve_counts", "MilpOutcome"):
        from helix_jax.solver import bisection

        return getattr(bisection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
