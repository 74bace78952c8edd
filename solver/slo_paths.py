"""Column generation over flow paths under a round-trip / hop budget (the SLO planner's core).

Owns: the path master problem over items (slo_model.Item), its pricing by a resource-indexed
dynamic program over layer boundaries, the Farley upper bound, and the integer restricted
master (price and branch) that chooses item counts.

Sits inside the SLO planner's data flow: slo_model (items) -> **slo_paths** -> slo.py.

Master (LP): maximise `sum_p f_p` over paths `p` (sequences of (item, entry layer) tiling
[0, L) within the limits) subject to `sum_{p uses i} f_p <= h_i n_i` per item (`h_i` its
capacity clipped at the target `T`) and `sum_{i in g} n_i <= N_g` per group. Pricing: with item
duals `pi`, the path of least dual length `sum pi_i` among those within budget, by a DP whose
state is (layer boundary, time units used, hops used); a path shorter than 1 enters. When none
is, the LP is solved over every path; before that, with `d` the least dual length, the LP value
over `d` bounds it (Farley), since the duals scaled by 1/d are feasible.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from helix_jax.solver.slo_model import TIME_UNITS, Item, Limits, hop_seconds, time_units

Path = tuple[tuple[int, int], ...]  # ((item index, entry layer), ...)
REDUCED_EPS = 1e-7


@dataclasses.dataclass
class PathResult:
    value: float  # tokens/s of the paths' flows
    flows: dict[Path, float]
    counts: list[float]  # n_i
    bound: float  # upper bound on the LP over every feasible path (inf if unproven)
    converged: bool


class PathSearch:
    """One item set under one set of limits; `bound` selects the bound model (slo_model)."""

    def __init__(self, items: list[Item], sizes: list[int], num_layers: int, limits: Limits, bound: bool):
        self.items, self.sizes, self.L, self.limits, self.bound = items, sizes, num_layers, limits, bound
        self.q = TIME_UNITS + 1 if limits.tpot_s is not None else 1
        self.h = limits.max_hops + 1 if limits.max_hops is not None else 1
        self.moves: list[list[tuple[int, int, int, int]]] = [[] for _ in range(num_layers)]
        for i, item in enumerate(items):
            for x in range(item.start, item.end):
                units = time_units(hop_seconds(item, x, num_layers, bound), limits, bound)
                hops = 1 if self.h > 1 else 0
                if units < self.q and hops < self.h:
                    self.moves[x].append((i, item.end, units, hops))
        self.columns: list[Path] = []
        self._seen: set[Path] = set()

    # ---- pricing ----
    def price(self, duals: np.ndarray, many: int = 40) -> tuple[float, list[Path]]:
        """(least dual length over feasible paths, up to `many` paths shorter than 1)."""
        shape = (self.q, self.h)
        dp = [np.full(shape, np.inf) for _ in range(self.L + 1)]
        pred_item = [np.full(shape, -1, dtype=np.int64) for _ in range(self.L + 1)]
        pred_x = [np.full(shape, -1, dtype=np.int64) for _ in range(self.L + 1)]
        dp[0][0, 0] = 0.0
        for x in range(self.L):
            here = dp[x]
            if not np.isfinite(here).any():
                continue
            for i, end, units, hops in self.moves[x]:
                cand = here[: self.q - units, : self.h - hops] + duals[i]
                target = dp[end][units:, hops:]
                better = cand < target - 1e-12
                if better.any():
                    target[better] = cand[better]
                    pred_item[end][units:, hops:][better] = i
                    pred_x[end][units:, hops:][better] = x
        final = dp[self.L]
        least = float(final.min()) if np.isfinite(final).any() else np.inf
        paths: list[Path] = []
        for flat in np.argsort(final, axis=None)[: 4 * many]:
            state = np.unravel_index(flat, shape)
            if not final[state] < 1 - REDUCED_EPS or len(paths) >= many:
                break
            path = self._trace(pred_item, pred_x, state)
            if path not in paths:
                paths.append(path)
        return least, paths

    def _trace(self, pred_item, pred_x, state) -> Path:
        b, (t, h), hops = self.L, state, []
        while b > 0:
            i, x = int(pred_item[b][t, h]), int(pred_x[b][t, h])
            hops.append((i, x))
            t -= time_units(hop_seconds(self.items[i], x, self.L, self.bound), self.limits, self.bound)
            h -= 1 if self.h > 1 else 0
            b = x
        return tuple(reversed(hops))

    def add(self, paths: list[Path]) -> int:
        fresh = [p for p in paths if p not in self._seen]
        self._seen.update(fresh)
        self.columns.extend(fresh)
        return len(fresh)

    # ---- master ----
    def _matrices(self, clip: float):
        P, n_items = len(self.columns), len(self.items)
        rows, cols = [], []
        for p, path in enumerate(self.columns):
            for i, _ in path:
                rows.append(i)
                cols.append(p)
        use = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_items, P))
        height = np.array([min(it.capacity, clip) for it in self.items])
        groups = sp.csr_matrix((np.ones(n_items), ([it.group for it in self.items], range(n_items))), shape=(len(self.sizes), n_items))
        a = sp.vstack([sp.hstack([use, -sp.diags(height)]), sp.hstack([sp.csr_matrix((len(self.sizes), P)), groups])])
        b = np.concatenate([np.zeros(n_items), np.array(self.sizes, dtype=float)])
        c = np.concatenate([-np.ones(P), np.zeros(n_items)])
        return a.tocsr(), b, c

    def solve_lp(self, clip: float, fixed: list[float] | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """(LP value, item duals, x) over the current columns; `fixed` pins the counts."""
        P, n_items = len(self.columns), len(self.items)
        if P == 0:
            return 0.0, np.zeros(n_items), np.zeros(n_items)  # x: no paths, every count zero
        a, b, c = self._matrices(clip)
        bounds = [(0, None)] * P + ([(v, v) for v in fixed] if fixed is not None else [(0, None)] * n_items)
        res = linprog(c, A_ub=a, b_ub=b, bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(f"SLO master LP failed: {res.message}")
        return -res.fun, -res.ineqlin.marginals[:n_items], res.x

    def generate(self, clip: float, deadline: float, fixed: list[float] | None = None) -> PathResult:
        """Column generation to convergence (or the deadline) on the LP relaxation."""
        value, duals, x = self.solve_lp(clip, fixed)
        converged, bound = False, np.inf
        while True:
            least, paths = self.price(duals)
            if least >= 1 - 1e-6:
                converged, bound = True, value
                break
            if least > 1e-9:
                bound = min(bound, value / least)
            if not paths or self.add(paths) == 0 or time.monotonic() > deadline:
                break
            value, duals, x = self.solve_lp(clip, fixed)
        return self._result(value, x, bound, converged)

    def _result(self, value: float, x: np.ndarray, bound: float, converged: bool) -> PathResult:
        P = len(x) - len(self.items)  # columns of the last LP (more may have been added since)
        flows = {self.columns[p]: float(x[p]) for p in range(P) if x[p] > 1e-9}
        counts = [float(v) for v in x[P:]]
        return PathResult(value, flows, counts, bound, converged)

    def integer_counts(self, clip: float, time_limit_s: float) -> list[int] | None:
        """Price and branch: the integer restricted master over the columns found; counts."""
        P = len(self.columns)
        if P == 0:
            return None
        a, b, c = self._matrices(clip)
        used = sorted({i for path in self.columns for i, _ in path})
        upper = np.concatenate([np.full(P, np.inf), np.zeros(len(self.items))])
        upper[[P + i for i in used]] = [self.sizes[self.items[i].group] for i in used]
        integrality = np.concatenate([np.zeros(P), np.ones(len(self.items))])
        res = milp(
            c,
            constraints=LinearConstraint(a, -np.inf, b),
            integrality=integrality,
            bounds=Bounds(np.zeros(P + len(self.items)), upper),
            options={"time_limit": max(1.0, time_limit_s), "mip_rel_gap": 1e-3},
        )
        if res.x is None:
            return None
        return [int(round(v)) for v in res.x[P:]]
