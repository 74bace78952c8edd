"""Region windows: each region of a geo-distributed cluster serves one contiguous block of layers.

Sits inside the solver beside milp.py: topology (regions, slow links) -> **windows** -> ranges ->
maxflow.py. plan.py uses it when every link between regions is slow (latency of at least
`REGION_LATENCY_MS`). A max-flow-optimal placement that ignores regions may send each token
across regions a dozen times (each crossing costs the link latency on every decode step);
confining each region to a window of layers bounds the crossings per token by the number of
regions, at a small cost in max-flow.

For a target F, `max_window(region, F)` is the most leading layers the region's nodes can cover
to height F (MILP: integer rectangle counts as in milp.py, binary u_l marking covered layers,
u non-increasing, coverage_l >= F u_l, maximise sum u). Bisection on F, starting from windows in
proportion to each region's capacity covered by the greedy sweep, finds the largest F whose
windows add up to L. Regions are laid out with the coordinator's region first; a window longer
than needed is trimmed and rectangles crossing its end are shortened.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections import defaultdict

import cvxpy as cp
import numpy as np

from helix_jax.costmodel import LINK_PLANNING_UTILIZATION, CostModel, best_layer_rate
from helix_jax.solver import heuristics
from helix_jax.solver.highs_run import solve
from helix_jax.solver.maxflow import max_flow
from helix_jax.solver.milp import Group, Rect, expand_counts, make_groups, make_rects
from helix_jax.topology import Topology

log = logging.getLogger(__name__)

REGION_LATENCY_MS = 10.0  # every inter-region link at least this slow: use windows
WINDOW_GAP = 5e-3  # bisection on F stops at this relative width


def slow_regions(topology: Topology) -> bool:
    """True when the cluster has several regions and every link between them is slow."""
    region = {n.name: n.region or "default" for n in topology.nodes}
    if len(set(region.values())) < 2:
        return False
    cross = [link.latency_ms for (a, b), link in topology.links.items()
             if a in region and b in region and region[a] != region[b]]
    return bool(cross) and min(cross) >= REGION_LATENCY_MS


class RegionCover:
    """The 'longest covered prefix at height F' MILP of one region (module docstring)."""

    def __init__(self, topology: Topology, cost_model: CostModel, nodes: list[str],
                 enters: bool = False, leaves: bool = False) -> None:
        """`enters`: tokens arrive from another region at the window's first layer; `leaves`:
        they leave for another region after its last layer. Both ask for `crossing_nodes`
        distinct nodes there (set per target in `max_window`)."""
        self.L = L = topology.model.num_layers
        self.groups: list[Group] = make_groups(topology, cost_model, [nodes])
        self.rects: list[Rect] = make_rects(self.groups, L)
        num_r = len(self.rects)
        covers = np.zeros((L, num_r))
        for i, r in enumerate(self.rects):
            covers[r.start:r.end, i] = 1.0
        group_rows = np.zeros((len(self.groups), num_r))
        for i, r in enumerate(self.rects):
            group_rows[r.group, i] = 1.0
        self.n = cp.Variable(num_r, integer=True,
                             bounds=[np.zeros(num_r), np.array([len(self.groups[r.group].nodes) for r in self.rects])])
        self.u = cp.Variable(L, boolean=True)
        self.h = cp.Parameter(num_r, nonneg=True)
        self.target = cp.Parameter(nonneg=True)
        self.receivers = cp.Parameter(nonneg=True)  # nodes taking the hand-offs in
        self.senders = cp.Parameter(nonneg=True)  # nodes handing them on
        cons = [group_rows @ self.n <= np.array([len(g.nodes) for g in self.groups]),
                covers @ cp.multiply(self.h, self.n) >= self.target * self.u,
                self.u[1:] <= self.u[:-1]]
        if enters:  # nodes holding the window's first layer receive the cross-region hand-offs
            cons.append(covers[0] @ self.n >= self.receivers * self.u[0])
        if leaves:  # nodes holding its last layer (u_l - u_{l+1} = 1 there) send them
            last = cp.hstack([self.u[:-1] - self.u[1:], self.u[-1:]])
            cons.append(covers @ self.n >= self.senders * last)
        self.problem = cp.Problem(cp.Maximize(cp.sum(self.u)), cons)
        self.capacities = np.array([r.capacity for r in self.rects])

    def max_window(self, target: float, time_limit_s: float, seed: int, crossing_nodes: int = 1,
                   senders: int | None = None) -> tuple[int, dict[Rect, int]]:
        """Longest window at height `target` with `crossing_nodes` receivers at its first layer
        and `senders` (default: as many) at its last."""
        if not self.rects:
            return 0, {}
        self.h.value = np.minimum(self.capacities, target)
        self.target.value = target
        self.receivers.value = crossing_nodes
        self.senders.value = crossing_nodes if senders is None else senders
        result = solve(self.problem, time_limit_s=time_limit_s, rel_gap=1e-6, seed=seed)
        if result.objective is None:
            return 0, {}
        counts = {self.rects[i]: int(round(v)) for i, v in enumerate(result.value(self.n)) if round(v) > 0}
        return int(round(result.objective)), counts


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    ranges: dict[str, tuple[int, int]]
    windows: dict[str, tuple[int, int]]  # region -> [start, end)
    target_tokens_per_s: float


def _layout(order: list[str], widths: dict[str, int], placements: dict[str, dict[str, tuple[int, int]]],
            num_layers: int) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Lay the regions' windows out in `order`; trim what runs past L, shorten ranges to fit."""
    ranges: dict[str, tuple[int, int]] = {}
    windows: dict[str, tuple[int, int]] = {}
    offset = 0
    for region in order:
        width = min(widths[region], num_layers - offset)
        if width <= 0:
            continue
        windows[region] = (offset, offset + width)
        for node, (s, e) in placements[region].items():
            if s < width:
                ranges[node] = (offset + s, offset + min(e, width))
        offset += width
    return ranges, windows


def greedy_windows(topology: Topology, cost_model: CostModel, order: list[str],
                   by_region: dict[str, list[str]]) -> tuple[float, dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Fallback: windows in proportion to each region's capacity, each covered by the greedy sweep."""
    L = topology.model.num_layers
    tables = heuristics.node_tables(topology, cost_model)
    strength = {r: sum(best_layer_rate(tables[n]) for n in by_region[r] if n in tables)
                for r in order}
    room = {r: sum(len(tables[n]) for n in by_region[r] if n in tables) for r in order}
    total = sum(strength.values()) or 1.0
    widths = {r: min(room[r], max(1, round(L * strength[r] / total))) if room[r] else 0 for r in order}
    while sum(widths.values()) < L and any(widths[r] < room[r] for r in order):  # fix rounding
        r = max((r for r in order if widths[r] < room[r]), key=lambda r: strength[r] / max(widths[r], 1))
        widths[r] += 1
    while sum(widths.values()) > L:
        r = min((r for r in order if widths[r] > 1), key=lambda r: strength[r] / widths[r])
        widths[r] -= 1
    placements = {}
    for r in order:
        own = {n: tables[n] for n in by_region[r] if n in tables}
        upper = sum(best_layer_rate(t) for t in own.values()) / max(widths[r], 1)
        placements[r] = (heuristics.best_greedy(own, widths[r], upper) or {}) if widths[r] else {}
    ranges, windows = _layout(order, widths, placements, L)
    covered = heuristics.coverage(ranges, tables, L)
    return min(covered), ranges, windows


def crossing_pair_capacity(topology: Topology, cost_model: CostModel,
                           by_region: dict[str, list[str]]) -> float:
    """Decode tokens/s of the slowest link between two nodes of different regions (prompt
    traffic included, see CostModel.link_tokens_per_s); inf with a single region."""
    slowest = math.inf
    for ra, nodes_a in by_region.items():
        for rb, nodes_b in by_region.items():
            if ra != rb:
                slowest = min([slowest] + [cost_model.link_tokens_per_s(a, b) for a in nodes_a for b in nodes_b])
    return slowest


def crossing_nodes(target: float, pair_tokens_per_s: float) -> int:
    """Nodes needed on each side of a region boundary: m senders x m receivers give m^2 links,
    which must carry `target` at no more than LINK_PLANNING_UTILIZATION of their capacity (a FIFO
    link busier than that queues every decode token behind prompt chunks)."""
    if not math.isfinite(pair_tokens_per_s):
        return 1
    if pair_tokens_per_s <= 0:
        return 0  # nothing crosses; the windows cannot be joined and max-flow will say so
    return max(1, math.ceil(math.sqrt(target / (LINK_PLANNING_UTILIZATION * pair_tokens_per_s)) - 1e-9))


def crossing_options(target: float, pair_tokens_per_s: float) -> list[tuple[int, int]]:
    """(senders, receivers) at a region boundary whose S x R node pairs carry `target` at no more
    than LINK_PLANNING_UTILIZATION of their capacity: the symmetric m x m of `crossing_nodes` and
    the lopsided 1 x P and P x 1 (P = the pairs needed), without dominated ones. A strong region
    with few nodes hands over from one of them to several of the next region's (1 x 4 instead of
    2 x 2 lets the 4 A100s of the paper's 3-region cluster keep their layers)."""
    m = crossing_nodes(target, pair_tokens_per_s)
    if not math.isfinite(pair_tokens_per_s) or pair_tokens_per_s <= 0:
        return [(m, m)]
    pairs = max(1, math.ceil(target / (LINK_PLANNING_UTILIZATION * pair_tokens_per_s) - 1e-9))
    options = {(m, m), (1, pairs), (pairs, 1)}
    return sorted(o for o in options if not any(p != o and p[0] <= o[0] and p[1] <= o[1] for p in options))


def _widest_tiling(order: list[str], found: dict, options: list[tuple[int, int]]):
    """The crossing choice per boundary whose windows cover the most layers: (total, choice)."""
    best = (-1, ())
    for choice in itertools.product(options, repeat=len(order) - 1):
        total = 0
        for i, region in enumerate(order):
            receivers = choice[i - 1][1] if i > 0 else 1
            senders = choice[i][0] if i < len(order) - 1 else 1
            total += found[region, receivers, senders][0]
        best = max(best, (total, choice))
    return best


def plan_windows(topology: Topology, cost_model: CostModel, upper: float, time_limit_s: float,
                 seed: int = 0) -> WindowPlan | None:
    """Largest F (and its placement) such that the regions' windows at height F tile [0, L)."""
    deadline = time.monotonic() + time_limit_s
    by_region: dict[str, list[str]] = defaultdict(list)
    for node in topology.nodes:
        by_region[node.region or "default"].append(node.name)
    first = topology.coordinator.region or "default"
    order = sorted(by_region, key=lambda r: (r != first, r))
    L = topology.model.num_layers
    lo, ranges, windows = greedy_windows(topology, cost_model, order, by_region)
    if lo > 0:  # the greedy sweep is blind to links: its windows may join over too few node pairs
        lo = min(lo, max_flow(topology, cost_model, ranges, True, balance=False).value_tokens_per_s)
    best = WindowPlan(ranges, windows, lo) if lo > 0 else None
    covers = {r: RegionCover(topology, cost_model, by_region[r], enters=i > 0, leaves=i < len(order) - 1)
              for i, r in enumerate(order)}
    pair_tokens_per_s = crossing_pair_capacity(topology, cost_model, by_region)
    hi = upper
    while hi - lo > WINDOW_GAP * hi and time.monotonic() < deadline:
        target = 0.5 * (lo + hi)
        options = crossing_options(target, pair_tokens_per_s)
        receiving, sending = sorted({o[1] for o in options}), sorted({o[0] for o in options})
        needs = {(r, recv, send) for i, r in enumerate(order) for recv in ([1] if i == 0 else receiving)
                 for send in ([1] if i == len(order) - 1 else sending)}
        per_call = max(0.2, (deadline - time.monotonic()) / (3 * max(len(needs), len(order))))
        found = {key: covers[key[0]].max_window(target, per_call, seed, key[1], senders=key[2]) for key in needs}
        total, choice = _widest_tiling(order, found, options)
        if total >= L:
            picked = {r: found[r, choice[i - 1][1] if i > 0 else 1, choice[i][0] if i < len(order) - 1 else 1]
                      for i, r in enumerate(order)}
            placements = {r: expand_counts(covers[r].groups, counts) for r, (_, counts) in picked.items()}
            ranges, windows = _layout(order, {r: w for r, (w, _) in picked.items()}, placements, L)
            lo, best = target, WindowPlan(ranges, windows, target)
        else:
            hi = target
    if best is not None:
        log.info("region windows %s at %.1f tokens/s", best.windows, best.target_tokens_per_s)
    return best


