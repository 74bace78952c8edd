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

Solution method (`solve_counts`): T0 = trivial bound; T <- LP(T) until it stops falling (each
LP value is an upper bound since LP(T) >= z*(T) >= min(F*, T)); then bisection on T between the
incumbent and that bound, each step a HiGHS feasibility question "cover every layer to height T"
(infeasible proves F* < T), with a maximisation from the incumbent when it runs out of time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from helix_jax.costmodel import CostModel, best_layer_rate
from helix_jax.solver.highs_run import solve
from helix_jax.topology import COORDINATOR, Topology

log = logging.getLogger(__name__)

LP_FIXPOINT_REL_TOL = 1e-4  # stop the T <- LP(T) iteration when it falls less than this
LP_FIXPOINT_MAX_ITER = 40
MAX_BISECTION_STEPS = 100  # a safety net; each step at least halves the open interval


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
        for b in names[i + 1:]:
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
    return [Rect(g, s, k, c) for g, group in enumerate(groups)
            for k, c in enumerate(group.capacities, start=1) if k >= dominant_min_layers(group, prune_target)
            for s in range(num_layers - k + 1)]


@dataclasses.dataclass
class MilpOutcome:
    counts: dict[Rect, int]
    model_value: float  # the model's z at the incumbent counts
    upper_bound: float  # proven bound on the true optimum
    status: str  # optimal | time_limit | no_solution
    lp_bound: float
    target: float
    seconds: float
    steps: list = dataclasses.field(default_factory=list)  # (target, status, seconds) per step


class PlacementModel:
    """The cvxpy model for one topology; the clipping target T is a Parameter."""

    def __init__(self, topology: Topology, cost_model: CostModel, groups: list[Group],
                 num_zones: int, partial_inference: bool, prune_target: float = float("inf"),
                 num_layers: int | None = None) -> None:
        """`prune_target`: the largest clipping target this model will be solved at; rectangles
        dominated at every target up to it are left out (`dominant_min_layers`). `num_layers`:
        cover only that many layers (a region's window) instead of the whole model."""
        self.L = L = num_layers or topology.model.num_layers
        self.groups = groups
        self.prune_target = prune_target
        self.rects = rects = make_rects(groups, L, prune_target if partial_inference else float("inf"))
        self.partial_inference = partial_inference
        self.index = {(r.group, r.start, r.num_layers): i for i, r in enumerate(rects)}
        num_r = len(rects)
        n_max = np.array([float(len(groups[r.group].nodes)) for r in rects])
        self.n = cp.Variable(num_r, integer=True, bounds=[np.zeros(num_r), n_max])
        self.z = cp.Variable(bounds=[0, None])
        self.h = cp.Parameter(num_r, nonneg=True)
        self.extra_vars: list[cp.Variable] = []
        hn = cp.multiply(self.h, self.n)
        zone_of = np.array([groups[r.group].zone for r in rects])

        def rows(pred) -> sp.csr_matrix:  # [L or L+1 boundary, R] 0/1 selectors
            data = [(b, i) for i, r in enumerate(rects) for b in pred(r)]
            ri, ci = zip(*data) if data else ((), ())
            return sp.csr_matrix((np.ones(len(ri)), (ri, ci)), shape=(L + 1, num_r))

        covers = rows(lambda r: range(r.start, r.end))  # row l: rects holding layer l
        ends = rows(lambda r: [r.end])  # row b: rects ending at boundary b
        starts = rows(lambda r: [r.start])  # row b: rects starting at b
        accepts = rows(lambda r: range(r.start, r.end))  # row b: may receive at b (partial)
        group_rows = sp.csr_matrix((np.ones(num_r), (np.array([r.group for r in rects]), np.arange(num_r))),
                                   shape=(len(groups), num_r))
        cons = [group_rows @ self.n <= np.array([len(g.nodes) for g in groups])]
        zone_rect = [sp.diags((zone_of == zz).astype(float)) for zz in range(num_zones)]

        if num_zones == 1:
            if partial_inference:
                cons.append(covers[:L] @ hn >= self.z)
            else:
                f = cp.Variable(num_r, bounds=[0, None])
                self.extra_vars.append(f)
                cons += [f <= hn, starts[0] @ f == self.z, ends[L] @ f == self.z,
                         ends[1:L] @ f == starts[1:L] @ f]
        else:
            cons += self._zone_constraints(topology, cost_model, hn, num_zones, zone_rect,
                                           covers, ends, starts, accepts)
        self.z_upper = cp.Parameter(nonneg=True)
        self.z_lower = cp.Parameter(nonneg=True)
        cons += [self.z <= self.z_upper, self.z >= self.z_lower]
        self.problem = cp.Problem(cp.Maximize(self.z), cons)
        self._pinned: cp.Problem | None = None

    def _zone_constraints(self, topology, cost_model, hn, num_zones, zone_rect, covers, ends, starts,
                          accepts) -> list:
        L, groups, n = self.L, self.groups, self.n
        zone_nodes = defaultdict(list)
        for g in groups:
            zone_nodes[g.zone].extend(g.nodes)
        size = [len(zone_nodes[zz]) for zz in range(num_zones)]

        def best_link(srcs, dsts) -> float:
            return max((cost_model.link_tokens_per_s(a, b) for a in srcs for b in dsts if a != b), default=0.0)

        pairs = [(p, q) for p in range(num_zones) for q in range(num_zones) if p != q]
        cap = {(p, q): best_link(zone_nodes[p], zone_nodes[q]) for p, q in pairs}
        total = {(p, q): sum(cost_model.link_tokens_per_s(a, b) for a in zone_nodes[p] for b in zone_nodes[q])
                 for p, q in pairs}
        t = cp.Variable((len(pairs), L + 1), bounds=[0, None])  # t[pair, b], boundaries 1..L-1 used
        self.extra_vars.append(t)
        cons = [t[:, 0] == 0, t[:, L] == 0]
        if self.partial_inference:
            a = cp.Variable((num_zones, L), bounds=[0, None])  # flow running layer l in zone
            self.extra_vars.append(a)
            cons.append(cp.sum(a, axis=0) == self.z)
            for zz in range(num_zones):
                cons.append(a[zz, :] <= (covers[:L] @ zone_rect[zz]) @ hn)
        else:
            f = cp.Variable(len(self.rects), bounds=[0, None])
            self.extra_vars.append(f)
            cons += [f <= hn, starts[0] @ f == self.z, ends[L] @ f == self.z]
        for zz in range(num_zones):
            out_idx = [i for i, pq in enumerate(pairs) if pq[0] == zz]
            in_idx = [i for i, pq in enumerate(pairs) if pq[1] == zz]
            t_out = cp.sum(t[out_idx, :], axis=0)  # [L+1]
            t_in = cp.sum(t[in_idx, :], axis=0)
            ends_z, starts_z, acc_z = (ends @ zone_rect[zz], starts @ zone_rect[zz], accepts @ zone_rect[zz])
            if self.partial_inference:
                cons.append(a[zz, 1:] == a[zz, :-1] + t_in[1:L] - t_out[1:L])
                cons.append(t_out[1:L] <= ends_z[1:L] @ hn)
                cons.append(t_in[1:L] <= acc_z[1:L] @ hn)
                entry, leave = starts_z[0] @ n, ends_z[L] @ n
                cons += [a[zz, 0] <= best_link([COORDINATOR], zone_nodes[zz]) * entry,
                         a[zz, L - 1] <= best_link(zone_nodes[zz], [COORDINATOR]) * leave]
            else:
                # flow ending in zz at b leaves to zz itself or other zones; arriving starts there
                cons.append(ends_z[1:L] @ f >= t_out[1:L])
                cons.append(starts_z[1:L] @ f >= t_in[1:L])
                cons.append(ends_z[1:L] @ f - t_out[1:L] == starts_z[1:L] @ f - t_in[1:L])
                cons += [starts_z[0] @ f <= best_link([COORDINATOR], zone_nodes[zz]) * (starts_z[0] @ n),
                         ends_z[L] @ f <= best_link(zone_nodes[zz], [COORDINATOR]) * (ends_z[L] @ n)]
        for i, (p, q) in enumerate(pairs):
            send = (ends @ zone_rect[p])[1:L] @ n
            recv = ((accepts if self.partial_inference else starts) @ zone_rect[q])[1:L] @ n
            cons += [t[i, 1:L] <= cap[p, q] * size[q] * send, t[i, 1:L] <= cap[p, q] * size[p] * recv]
            # zone-to-zone cut: every crossing from p to q, at any boundary, uses a link p -> q
            cons.append(cp.sum(t[i, 1:L]) <= total[p, q])
        return cons

    # ---- solving ----
    def set_target(self, target: float, require: float = 0.0) -> None:
        """Clip heights at `target`, bound z <= target and demand z >= `require`."""
        self.h.value = np.minimum(np.array([r.capacity for r in self.rects]), target)
        self.z_upper.value = target
        self.z_lower.value = min(require, target)

    def lp_value(self, target: float) -> float:
        self.set_target(target)
        result = solve(self.problem, time_limit_s=60, relax=True)
        return result.objective if result.objective is not None else target

    def counts_vector(self, counts: dict[Rect, int]) -> np.ndarray:
        x = np.zeros(len(self.rects))
        for rect, c in counts.items():
            x[self.index[(rect.group, rect.start, rect.num_layers)]] = c
        return x

    def counts_of(self, n_value: np.ndarray) -> dict[Rect, int]:
        return {self.rects[i]: int(round(v)) for i, v in enumerate(n_value) if round(v) > 0}

    def evaluate(self, counts: dict[Rect, int], target: float) -> tuple[float, dict[cp.Variable, np.ndarray] | None]:
        """Model value z of fixed `counts` with heights clipped at `target` (an LP), and the full
        variable assignment, usable as a MILP start at that target."""
        if self._pinned is None:
            self._pinned_counts = cp.Parameter(len(self.rects))
            self._pinned = cp.Problem(self.problem.objective,
                                      [*self.problem.constraints, self.n == self._pinned_counts])
        self.set_target(target)
        self._pinned_counts.value = self.counts_vector(counts)
        result = solve(self._pinned, time_limit_s=30, relax=True)
        if result.objective is None:
            return 0.0, None
        start = {v: result.value(v) for v in (self.n, self.z, *self.extra_vars)}
        return float(result.objective), start


def lp_fixpoint(model: PlacementModel, start_target: float, deadline: float) -> float:
    """Iterate T <- LP(T) from a valid upper bound; every value is a valid upper bound."""
    target = start_target
    for _ in range(LP_FIXPOINT_MAX_ITER):
        value = model.lp_value(target)
        if value >= target * (1 - LP_FIXPOINT_REL_TOL) or time.monotonic() > deadline:
            return min(value, target)
        target = value
    return target


def solve_counts(model: PlacementModel, upper: float, *, time_limit_s: float, rel_gap: float, seed: int,
                 start_counts: dict[Rect, int] | None = None) -> MilpOutcome:
    """Bisection on the target F between the incumbent `lo` and a proven bound `hi`.

    Each step asks HiGHS whether every layer can be covered to height F with heights clipped at
    F (z = F): "infeasible" proves F* < F; a solution raises `lo`. When that question runs out
    of time, a second try maximises z <= F from the incumbent: it raises `lo` to whatever it
    finds, and its dual bound, when below F, lowers `hi`. After a step that proved nothing the
    next target lies halfway up to `hi` (infeasibility is easier to prove further up).
    """
    t0 = time.monotonic()
    deadline = t0 + time_limit_s
    hi = lp_fixpoint(model, upper, t0 + 0.2 * time_limit_s)
    lp_bound = hi
    best_counts = dict(start_counts or {})
    lo = model.evaluate(best_counts, upper)[0] if best_counts else 0.0
    steps: list[tuple[float, str, float]] = []
    unresolved: float | None = None  # a target whose step proved nothing
    reached = lo  # highest target shown reachable (lo may trail it by solver tolerances)

    def accept(result) -> None:
        nonlocal lo, best_counts
        counts = model.counts_of(result.value(model.n))
        value = model.evaluate(counts, upper)[0]
        if value > lo:
            lo, best_counts = value, counts

    while (hi > reached * (1 + rel_gap) + 1e-9 and time.monotonic() < deadline - 0.2
           and len(steps) < MAX_BISECTION_STEPS):
        if unresolved is not None:
            target = 0.5 * (unresolved + hi)
        else:
            target = 0.5 * (reached + hi) if reached > 0 else 0.75 * hi
        target = max(target, reached * (1 + 0.5 * rel_gap))
        remaining = deadline - time.monotonic()
        slice_s = max(0.2, 0.25 * remaining if remaining > 4 else remaining)
        model.set_target(target, require=target)
        result = solve(model.problem, time_limit_s=slice_s, rel_gap=1.0, seed=seed)
        steps.append((round(target, 4), "feasibility:" + result.status, round(result.seconds, 2)))
        if result.status == "infeasible":
            hi, unresolved = target, None
            continue
        if result.objective is not None:
            accept(result)
            reached, unresolved = max(reached, lo, target), None
            continue
        # no answer: look for better incumbents below the target (and perhaps a bound)
        start = model.evaluate(best_counts, target)[1] if best_counts else None
        model.set_target(target)
        slice_s = max(0.2, min(slice_s, deadline - time.monotonic()))
        result = solve(model.problem, time_limit_s=slice_s, rel_gap=rel_gap, seed=seed, start=start)
        steps.append((round(target, 4), "maximise:" + result.status, round(result.seconds, 2)))
        if result.objective is not None:
            accept(result)
            reached = max(reached, lo)
        if result.bound is not None and result.bound < target * (1 - 1e-7):
            hi, unresolved = min(hi, max(result.bound, lo)), None
        elif unresolved is not None and target >= hi * (1 - rel_gap):
            break
        else:
            unresolved = target
    log.info("milp bisection steps: %s", steps)
    status = "optimal" if hi <= reached * (1 + rel_gap) + 1e-9 else "time_limit"
    if not best_counts:
        status = "no_solution"
    return MilpOutcome(best_counts, lo, max(hi, lo), status, lp_bound, hi, time.monotonic() - t0, steps)


def expand_counts(groups: list[Group], counts: dict[Rect, int]) -> dict[str, tuple[int, int]]:
    """Concrete ranges: the nodes of each group, in name order, take its rectangles by start."""
    ranges: dict[str, tuple[int, int]] = {}
    free = {g: list(group.nodes) for g, group in enumerate(groups)}
    for rect in sorted(counts, key=lambda r: (r.group, r.start, r.num_layers)):
        for _ in range(counts[rect]):
            node = free[rect.group].pop(0)
            ranges[node] = (rect.start, rect.end)
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
