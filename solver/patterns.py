"""Layer patterns: a bin-covering bound that sees whole nodes, and placements made of stages.

Sits beside the rectangle MILP (milp.py), on the same groups: groups + target F -> **patterns**
-> a proof that F is out of reach, or a placement of stages -> plan.py (bound and candidate).

Under partial inference with links that do not bind, max-flow >= F iff every layer is covered
to F (heights clipped at F, milp.py). The rectangle LP lets a layer be covered by fractions of
nodes; here a layer's cover is a *pattern*: a multiset of items (g, k) = "a node of group g
holding k layers", whose heights min(c_g(k), F) add up to F. A placement covering every layer
uses, for each layer, one pattern; a node of g holding k layers appears in k layers' patterns,
so a layer's item (g, k) costs 1/k node of g. Hence the configuration LP (Gilmore-Gomory)
`max sum_p y_p  s.t.  sum_p (sum_{(g,k) in p} 1/k) y_p <= |g|,  y >= 0`
is at least L for every reachable F. Its columns come from column generation: given the duals
pi >= 0 of the group rows, the cheapest pattern solves a covering knapsack
`min sum_i a_i pi_g / k  s.t.  sum_i a_i h_i >= F, at most |g| items of g` (HiGHS, exact). Whatever the pricing's
dual bound m proves, pi / m is dual-feasible, so `pi . |g| / m` bounds the LP (Farley's bound):
when it is below L, F is proven out of reach, even if column generation stops early. Where the
rectangle LP lets a layer be covered by 1.3 nodes, this bound knows it takes two: on the 200-GPU
synthetic cluster it is ~4% below the rectangle LP's fix-point.

Stages (`stage_placement`): a placement made of blocks of consecutive layers, each covered by
one pattern; a block of b layers covers an item (g, k) with ceil(b / k) nodes of g end to end
(the last one shorter, which only raises its height). An integer program over
x[p, b] = blocks of pattern p and length b, `sum b x = L` and the group sizes, finds one in
well under a second; every solution is a placement whose min coverage is at least F.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.sparse as sp

from helix_jax.solver.deadline import Deadline
from helix_jax.solver.highs_run import LinearModel
from helix_jax.solver.milp import Group

PRICING_TOL = 1e-7  # reduced costs within this of zero end the column generation (the LP's own tolerance)
MAX_COLUMNS = 2000  # priced columns per pool, a safety net (a run prices a few hundred)


@dataclasses.dataclass
class PatternPool:
    """Items of the groups and the patterns generated so far (a pattern covering F covers any
    smaller target, so the pool is shared by all targets)."""

    groups: list[Group]
    num_layers: int
    items: list[tuple[int, int, float]] = dataclasses.field(init=False)  # (group, k, c_g(k))
    patterns: list[np.ndarray] = dataclasses.field(default_factory=list)  # [items] multiplicities
    layer_bounds: dict = dataclasses.field(default_factory=dict)  # target -> (layers bound, duals): window_stages
    seeded: set = dataclasses.field(default_factory=set)  # targets whose single-item patterns are in
    generated: int = 0  # columns priced so far (MAX_COLUMNS caps them)
    known: set = dataclasses.field(default_factory=set)  # the priced columns, as bytes

    def __post_init__(self) -> None:
        self.items = [(g, k, c) for g, group in enumerate(self.groups) for k, c in enumerate(group.capacities, 1)]
        self.sizes = np.array([float(len(g.nodes)) for g in self.groups])
        self.item_group = np.array([g for g, _, _ in self.items])
        self.item_k = np.array([float(k) for _, k, _ in self.items])
        self.item_c = np.array([c for _, _, c in self.items])

    def heights(self, target: float) -> np.ndarray:
        return np.minimum(self.item_c, target)

    def usage(self, pattern: np.ndarray) -> np.ndarray:
        """Nodes of each group one layer of `pattern` uses (1/k per item)."""
        return np.bincount(self.item_group, weights=pattern / self.item_k, minlength=len(self.groups))

    def add(self, pattern: np.ndarray) -> bool:
        """A column from the pricing knapsack; False if the pool has it already (the master LP's
        tolerance then hides a reduced cost that is really zero: column generation is done)."""
        key = pattern.tobytes()
        if key in self.known:
            return False
        self.known.add(key)
        self.patterns.append(pattern)
        self.generated += 1
        return True

    def seed(self, target: float) -> None:
        """Add the single-item patterns of `target` (each item stacked just high enough): they
        start the column generation, and the stages need them sized for this target."""
        if target in self.seeded:
            return
        self.seeded.add(target)
        for i, h in enumerate(self.heights(target)):
            p = np.zeros(len(self.items))
            p[i] = math.ceil(target / h * (1 - 1e-12))
            if p.tobytes() not in self.known:
                self.known.add(p.tobytes())
                self.patterns.append(p)

    def covering(self, target: float) -> list[np.ndarray]:
        h = self.heights(target)
        return [p for p in self.patterns if p @ h >= target * (1 - 1e-9)]


def _price(
    pool: PatternPool, target: float, duals: np.ndarray, deadline: Deadline, min_items: int = 0, cap: float = math.inf
) -> tuple[float, float, np.ndarray]:
    """The cheapest pattern at `duals` (with at least `min_items` nodes, each counted at most `cap`
    high): (its cost, a proven lower bound on the cheapest, the pattern)."""
    h = np.minimum(pool.heights(target), cap)
    weight = duals[pool.item_group] / pool.item_k
    lm = LinearModel()
    a = lm.var(len(pool.items), 0.0, np.maximum(np.ceil(target / h), min_items), integer=True)
    lm.rows([(a, h.reshape(1, -1))], lower=target * (1 - 1e-9))
    # a layer is covered by distinct nodes: at most |g| of group g (valid for the bound, too)
    lm.rows(
        [
            (
                a,
                sp.csr_matrix(
                    (np.ones(len(pool.items)), (pool.item_group, np.arange(len(pool.items)))), shape=(len(pool.groups), len(pool.items))
                ),
            )
        ],
        upper=pool.sizes,
    )
    if min_items > 1:
        lm.rows([(a, np.ones((1, len(pool.items))))], lower=float(min_items))
    result = lm.solve({a: weight}, maximize=False, time_limit_s=deadline.seconds(5.0), rel_gap=1e-9)
    if result.objective is None:
        return math.inf, (result.bound if result.bound is not None else 0.0), np.zeros(len(pool.items))
    low = min(result.objective, result.bound if result.bound is not None else 0.0)
    return result.objective, max(0.0, low), np.round(result.value(a))


def _master(pool: PatternPool, target: float, deadline: Deadline) -> tuple[float, np.ndarray] | None:
    """The configuration LP over the pool's patterns covering `target`: (layers, group duals)."""
    pool.seed(target)
    columns = pool.covering(target)
    lm = LinearModel()
    y = lm.var(len(columns))
    rows = lm.rows([(y, sp.csr_matrix(np.column_stack([pool.usage(p) for p in columns])))], upper=pool.sizes)
    master = lm.solve({y: 1.0}, maximize=True, time_limit_s=deadline.seconds(10.0), relax=True)
    if master.objective is None or master.status != "optimal" or master.row_duals is None:
        return None
    return master.objective, np.maximum(0.0, master.row_duals[rows])


def out_of_reach(pool: PatternPool, target: float, deadline: Deadline, layers: float | None = None) -> bool | None:
    """True when the configuration LP proves that fewer than `layers` (default L) layers can be
    covered to `target`; False when the LP covers them (no proof possible); None when the
    deadline (or a numerical corner) stopped it first. Columns found stay in the pool."""
    need = pool.num_layers if layers is None else layers
    while not deadline.expired() and pool.generated < MAX_COLUMNS:
        solved = _master(pool, target, deadline)
        if solved is None:
            return None
        value, duals = solved
        if value >= need * (1 - 1e-9):
            return False
        cost, low, pattern = _price(pool, target, duals, deadline)
        if low > 0 and float(duals @ pool.sizes) / low < need * (1 - 1e-7):
            return True  # Farley: duals / low is dual-feasible, so the LP covers fewer layers
        if cost >= 1 - PRICING_TOL or not np.any(pattern) or not pool.add(pattern):
            return None  # LP optimum below `need` but not proven with margin (numerical corner)
    return None


def layer_bound(pool: PatternPool, target: float, deadline: Deadline) -> tuple[float, np.ndarray | None]:
    """Column generation to the configuration LP's optimum: (a proven bound on the layers the
    pool covers to `target`, the last duals). Stopped early, the bound is Farley's. Remembered
    per target in the pool (regions alike ask for it once)."""
    if target in pool.layer_bounds:
        return pool.layer_bounds[target]
    bound, duals = math.inf, None
    while not deadline.expired() and pool.generated < MAX_COLUMNS:
        solved = _master(pool, target, deadline)
        if solved is None:
            break
        _, duals = solved
        cost, low, pattern = _price(pool, target, duals, deadline)
        if low > 0:
            bound = min(bound, float(duals @ pool.sizes) / low)
        if cost >= 1 - PRICING_TOL or not np.any(pattern) or not pool.add(pattern):
            pool.layer_bounds[target] = (bound, duals)  # the LP optimum: final for this target
            break
    return bound, duals


def block_usage(pool: PatternPool, columns: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """[groups, columns x lengths]: nodes a block of each pattern and length uses (ceil(b / k) per item)."""
    use = np.zeros((len(pool.groups), len(columns) * len(lengths)))
    for j, p in enumerate(columns):
        for i in np.nonzero(p)[0]:
            use[pool.item_group[i], j * len(lengths) : (j + 1) * len(lengths)] += p[i] * np.ceil(lengths / pool.item_k[i])
    return use


def stage_placement(pool: PatternPool, target: float, deadline: Deadline, seed: int = 0) -> dict[str, tuple[int, int]] | None:
    """A placement of stages covering every layer to `target` (module docstring), or None."""
    L = pool.num_layers
    layer_bound(pool, target, deadline.share(0.5))  # the LP's own columns, a richer choice of stages
    columns = pool.covering(target)
    if not columns or deadline.expired():
        return None
    lengths = np.arange(1, L + 1)
    lm = LinearModel()
    x = lm.var(len(columns) * L, 0.0, float(L), integer=True)
    lm.rows([(x, np.tile(lengths, len(columns)).astype(float).reshape(1, -1))], float(L), float(L))
    lm.rows([(x, sp.csr_matrix(block_usage(pool, columns, lengths)))], upper=pool.sizes)
    result = lm.solve({x: np.zeros(len(columns) * L)}, maximize=False, time_limit_s=deadline.seconds(10.0), rel_gap=1.0, seed=seed)
    if result.x is None:
        return None
    counts = np.round(result.value(x)).astype(int)
    blocks = [(columns[j], b + 1) for index in np.nonzero(counts)[0] for j, b in [divmod(int(index), L)] for _ in range(counts[index])]
    return lay_out(pool, [g.nodes for g in pool.groups], blocks)


def lay_out(
    pool: PatternPool,
    nodes: list[tuple[str, ...]],
    blocks: list[tuple[np.ndarray, int]],
) -> dict[str, tuple[int, int]]:
    """Ranges of `blocks` (pattern, length) laid end to end from layer 0, on `nodes` per group: in
    a block every item's nodes run end to end, the last one shorter."""
    free = [list(reversed(group)) for group in nodes]
    ranges: dict[str, tuple[int, int]] = {}
    offset = 0
    for pattern, b in blocks:
        for i in np.nonzero(pattern)[0]:
            g, k = pool.item_group[i], int(pool.item_k[i])
            for _ in range(int(pattern[i])):
                for start in range(offset, offset + b, k):
                    ranges[free[g].pop()] = (start, min(start + k, offset + b))
        offset += b
    return ranges


def search(
    pool: PatternPool, lo: float, hi: float, deadline: Deadline, rel_gap: float, seed: int = 0, stages: bool = True
) -> tuple[float, float, dict[str, tuple[int, int]] | None]:
    """Bisection for a bound (a target proven out of reach), then, with `stages`, for a stage
    placement (the highest target one reaches below the highest target the LP does not
    exclude): (target reached, bound, ranges or None). `lo` must be reachable (or 0), `hi` a
    proven bound."""
    open_hi = lo  # highest target the LP does not exclude
    bound_deadline = deadline.share(0.5) if stages else deadline
    while hi > open_hi * (1 + rel_gap) and not bound_deadline.expired():
        target = 0.5 * (open_hi + hi) if open_hi > 0 else 0.75 * hi
        verdict = out_of_reach(pool, target, bound_deadline)
        if verdict is None:
            break
        hi, open_hi = (target, open_hi) if verdict else (hi, target)
    best_ranges, top = None, max(open_hi, lo)
    while stages and top > lo * (1 + rel_gap) and not deadline.expired():
        target = 0.5 * (lo + top) if lo > 0 else 0.75 * top
        if target <= lo:
            break
        ranges = stage_placement(pool, target, deadline, seed)
        if ranges is None:
            top = target
        else:
            lo, best_ranges = target, ranges
    return lo, hi, best_ranges
