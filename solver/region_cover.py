"""One region's window search: the longest prefix of layers its nodes cover to height F.

Sits inside the region-window search (regions.py): a region's nodes + target F + crossing nodes
-> **RegionWindow.longest** -> (window length, the region's ranges in it) -> regions.py, which
lays the windows out one after another.

Two solvers, the fast one first: stage blocks (window_stages.py; seconds at any size), then the
rectangle MILP `RegionCover` started from them, which can only lengthen the window within its
time slice. RegionCover (integer rectangle counts as in milp.py, binary u_l marking covered
layers, u non-increasing, coverage_l >= F u_l, maximise sum u) is exact but slow beyond a few
dozen nodes; the blocks keep the search useful where it would time out. Regions with the same
GPU mix (and the same crossings) share one RegionWindow and its answers.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from helix_jax.costmodel import LINK_PLANNING_UTILIZATION, CostModel
from helix_jax.solver.deadline import Deadline
from helix_jax.solver.highs_run import LinearModel
from helix_jax.solver.milp import Group, Rect, expand_counts, make_groups, make_rects, selectors
from helix_jax.solver.patterns import PatternPool, lay_out
from helix_jax.solver.window_stages import layer_bound, stage_window
from helix_jax.topology import Topology

COVER_MAX_NODES = 24  # larger regions get stage windows only


class RegionCover:
    """The 'longest covered prefix at height F' MILP of one region (module docstring)."""

    def __init__(self, topology: Topology, cost_model: CostModel, nodes: list[str], enters: bool = False, leaves: bool = False) -> None:
        """`enters`: tokens arrive from another region at the window's first layer; `leaves`:
        they leave for another region after its last layer. Both ask for `crossing_nodes`
        distinct nodes there (set per target in `max_window`)."""
        self.L = L = topology.model.num_layers
        self.groups: list[Group] = make_groups(topology, cost_model, [nodes])
        self.rects: list[Rect] = make_rects(self.groups, L)
        self.index = {(r.group, r.start, r.num_layers): i for i, r in enumerate(self.rects)}
        num_r = len(self.rects)
        self.capacities = np.array([r.capacity for r in self.rects])
        self.h = self.capacities.copy()
        self.params = {"target": 0.0, "receivers": 0.0, "senders": 0.0}
        covers = selectors(self.rects, L).covers[:L]  # [L, R]
        group_rows = sp.csr_matrix((np.ones(num_r), ([r.group for r in self.rects], np.arange(num_r))), shape=(len(self.groups), num_r))
        lp = self.lp = LinearModel()
        self.n = lp.var(num_r, 0.0, np.array([float(len(self.groups[r.group].nodes)) for r in self.rects]), integer=True)
        self.u = lp.var(L, 0.0, 1.0, integer=True)
        eye = sp.identity(L, format="csr")
        lp.rows([(self.n, group_rows)], upper=[float(len(g.nodes)) for g in self.groups])
        lp.rows([(self.n, lambda: covers @ sp.diags(self.h)), (self.u, lambda: -self.params["target"] * eye)], lower=0.0)
        lp.rows([(self.u, eye[1:] - eye[:-1])], upper=0.0)  # u non-increasing
        if enters:  # nodes holding the window's first layer receive the cross-region hand-offs
            lp.rows([(self.n, covers[0:1]), (self.u, lambda: -self.params["receivers"] * eye[0:1])], lower=0.0)
        if leaves:  # nodes holding its last layer (u_l - u_{l+1} = 1 there) send them
            last = eye - sp.vstack([eye[1:], sp.csr_matrix((1, L))])
            lp.rows([(self.n, covers), (self.u, lambda: -self.params["senders"] * last)], lower=0.0)

    def max_window(
        self,
        target: float,
        time_limit_s: float,
        seed: int,
        crossing_nodes: int = 1,
        senders: int | None = None,
        start: tuple[int, dict[str, tuple[int, int]]] | None = None,
    ) -> tuple[int, dict[Rect, int]]:
        """Longest window at height `target` with `crossing_nodes` receivers at its first layer
        and `senders` (default: as many) at its last. `start`: a window known to meet these
        (its length and the ranges of this region's nodes), handed to HiGHS as the incumbent."""
        if not self.rects:
            return 0, {}
        self.h[:] = np.minimum(self.capacities, target)
        self.params.update(target=target, receivers=crossing_nodes, senders=crossing_nodes if senders is None else senders)
        x0 = None
        if start is not None:
            x0 = np.zeros(self.lp.num_cols)
            group_of = {n: g for g, group in enumerate(self.groups) for n in group.nodes}
            for node, (s, e) in start[1].items():
                x0[self.n.offset + self.index[(group_of[node], s, e - s)]] += 1
            x0[self.u.offset : self.u.offset + start[0]] = 1.0
        result = self.lp.solve({self.u: 1.0}, maximize=True, time_limit_s=time_limit_s, rel_gap=1e-6, seed=seed, start=x0)
        if result.objective is None:
            return 0, {}
        counts = {self.rects[i]: int(round(v)) for i, v in enumerate(result.value(self.n)) if round(v) > 0}
        return int(round(result.objective)), counts


class RegionWindow:
    """The window solvers of one kind of region (module docstring); `pool` may be shared by the
    kinds with the same GPU mix (the patterns and the layer bound do not depend on crossings)."""

    def __init__(
        self, topology: Topology, cost_model: CostModel, nodes: list[str], enters: bool, leaves: bool, pool: PatternPool | None = None
    ) -> None:
        self.enters, self.leaves = enters, leaves
        self.cover = RegionCover(topology, cost_model, nodes, enters=enters, leaves=leaves)
        self.pool = pool or PatternPool(self.cover.groups, topology.model.num_layers)
        self.size = len(nodes)
        self.rank = 0  # the position of this kind in the search's order of work (regions.py)

    def longest(
        self,
        target: float,
        before: tuple[int, int] | None,
        after: tuple[int, int] | None,
        pair_tokens_per_s: float,
        deadline: Deadline,
        seed: int,
    ) -> tuple[int, tuple]:
        """(window length, answer) between the crossings `before` and `after` ((senders,
        receivers) at the region's first and last boundary; None: no crossing there); answers
        go on a region's nodes with `ranges(answer, groups)`. The rectangle MILP runs only while
        the blocks fall short of the layer bound, on regions of at most COVER_MAX_NODES nodes
        (beyond, it rarely improves on them within its slice)."""
        receivers, first_cap = (before[1], before[0] * LINK_PLANNING_UTILIZATION * pair_tokens_per_s) if before else (0, math.inf)
        senders, last_cap = (after[0], after[1] * LINK_PLANNING_UTILIZATION * pair_tokens_per_s) if after else (0, math.inf)
        if max(receivers, senders) > self.size:
            return 0, ("stages", [])
        width, blocks = stage_window(self.pool, target, deadline.share(0.5), receivers, senders, seed, first_cap, last_cap)
        bound = layer_bound(self.pool, target, deadline)[0]
        if width >= min(self.pool.num_layers, bound) - 1e-9 or self.size > COVER_MAX_NODES or deadline.expired():
            return width, ("stages", blocks)
        start = (width, lay_out(self.pool, [g.nodes for g in self.cover.groups], blocks)) if width else None
        cover_width, counts = self.cover.max_window(target, deadline.seconds(), seed, max(receivers, 1), max(senders, 1), start)
        if cover_width > width:
            return cover_width, ("rects", counts)
        return width, ("stages", blocks)

    def ranges(self, answer: tuple, groups: list[Group]) -> dict[str, tuple[int, int]]:
        kind, payload = answer
        if kind == "rects":
            return expand_counts(groups, payload)
        return lay_out(self.pool, [g.nodes for g in groups], payload)
