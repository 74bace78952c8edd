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
import logging
import math
from collections import defaultdict

import numpy as np
import scipy.sparse as sp

from helix_jax.costmodel import LINK_PLANNING_UTILIZATION, CostModel, best_layer_rate
from helix_jax.solver import heuristics
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.classflow import class_max_flow
from helix_jax.solver.deadline import Deadline
from helix_jax.solver.highs_run import LinearModel
from helix_jax.solver.milp import Group, Rect, expand_counts, make_groups, make_rects, selectors
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
        self.capacities = np.array([r.capacity for r in self.rects])
        self.h = self.capacities.copy()
        self.params = {"target": 0.0, "receivers": 0.0, "senders": 0.0}
        covers = selectors(self.rects, L).covers[:L]  # [L, R]
        group_rows = sp.csr_matrix((np.ones(num_r), ([r.group for r in self.rects], np.arange(num_r))),
                                   shape=(len(self.groups), num_r))
        lp = self.lp = LinearModel()
        self.n = lp.var(num_r, 0.0, np.array([float(len(self.groups[r.group].nodes)) for r in self.rects]),
                        integer=True)
        self.u = lp.var(L, 0.0, 1.0, integer=True)
        eye = sp.identity(L, format="csr")
        lp.rows([(self.n, group_rows)], upper=[float(len(g.nodes)) for g in self.groups])
        lp.rows([(self.n, lambda: covers @ sp.diags(self.h)), (self.u, lambda: -self.params["target"] * eye)],
                lower=0.0)
        lp.rows([(self.u, eye[1:] - eye[:-1])], upper=0.0)  # u non-increasing
        if enters:  # nodes holding the window's first layer receive the cross-region hand-offs
            lp.rows([(self.n, covers[0:1]), (self.u, lambda: -self.params["receivers"] * eye[0:1])], lower=0.0)
        if leaves:  # nodes holding its last layer (u_l - u_{l+1} = 1 there) send them
            last = eye - sp.vstack([eye[1:], sp.csr_matrix((1, L))])
            lp.rows([(self.n, covers), (self.u, lambda: -self.params["senders"] * last)], lower=0.0)

    def max_window(self, target: float, time_limit_s: float, seed: int, crossing_nodes: int = 1,
                   senders: int | None = None) -> tuple[int, dict[Rect, int]]:
        """Longest window at height `target` with `crossing_nodes` receivers at its first layer
        and `senders` (default: as many) at its last."""
        if not self.rects:
            return 0, {}
        self.h[:] = np.minimum(self.capacities, target)
        self.params.update(target=target, receivers=crossing_nodes,
                           senders=crossing_nodes if senders is None else senders)
        result = self.lp.solve({self.u: 1.0}, maximize=True, time_limit_s=time_limit_s, rel_gap=1e-6, seed=seed)
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


def crossing_pair_capacity(classes: NodeClasses) -> float:
    """Decode tokens/s of the slowest link between two nodes of different regions (prompt
    traffic included, see CostModel.link_tokens_per_s); inf with a single region."""
    region = [c.region or "default" for c in classes.classes]
    return min((classes.link_tokens_per_s(a, b) for a in range(len(region)) for b in range(len(region))
                if region[a] != region[b]), default=math.inf)


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
    """The crossing choice per boundary whose windows cover the most layers: (total, choice), the
    lexicographically largest choice among the widest (a chain: dynamic programming over the
    boundaries, O(regions x options^2))."""
    last = len(order) - 1
    if last == 0:
        return found[order[0], 1, 1][0], ()

    def width(i: int, before, after) -> int:  # region i between the choices at its two boundaries
        return found[order[i], before[1] if before else 1, after[0] if after else 1][0]

    # rest[i][c]: the most layers regions i+1.. cover when boundary i takes option c
    rest: list[dict] = [dict() for _ in range(last)]
    for c in options:
        rest[last - 1][c] = width(last, c, None)
    for i in range(last - 2, -1, -1):
        for c in options:
            rest[i][c] = max(width(i + 1, c, d) + rest[i + 1][d] for d in options)
    choice: list[tuple[int, int]] = []
    total = 0
    for i in range(last):
        before = choice[-1] if choice else None
        score = {c: width(i, before, c) + rest[i][c] for c in options}
        top = max(score.values())
        pick = max(c for c in options if score[c] == top)
        if i == 0:
            total = top
        choice.append(pick)
    return total, tuple(choice)


def plan_windows(topology: Topology, cost_model: CostModel, upper: float, time_limit_s: float | Deadline,
                 seed: int = 0, classes: NodeClasses | None = None) -> WindowPlan | None:
    """Largest F (and its placement) such that the regions' windows at height F tile [0, L).
    `time_limit_s`: seconds, or a Deadline; the best windows found by then are returned."""
    deadline = time_limit_s if isinstance(time_limit_s, Deadline) else Deadline(time_limit_s)
    classes = classes or NodeClasses(topology, cost_model)
    by_region: dict[str, list[str]] = defaultdict(list)
    for node in topology.nodes:
        by_region[node.region or "default"].append(node.name)
    first = topology.coordinator.region or "default"
    order = sorted(by_region, key=lambda r: (r != first, r))
    L = topology.model.num_layers
    lo, ranges, windows = greedy_windows(topology, cost_model, order, by_region)
    if lo > 0:  # the greedy sweep is blind to links: its windows may join over too few node pairs
        lo = min(lo, class_max_flow(topology, cost_model, classes, ranges, True).value_tokens_per_s)
    best = WindowPlan(ranges, windows, lo) if lo > 0 else None
    covers = _region_covers(topology, cost_model, order, by_region)
    pair_tokens_per_s = crossing_pair_capacity(classes)
    most = max(len(nodes) for nodes in by_region.values())  # no region has more crossing nodes
    hi = upper
    while hi - lo > WINDOW_GAP * hi and not deadline.expired():
        target = 0.5 * (lo + hi)
        options = [o for o in crossing_options(target, pair_tokens_per_s) if max(o) <= most]
        if not options:  # no region has the nodes to carry the target across a boundary
            hi = target
            continue
        receiving, sending = sorted({o[1] for o in options}), sorted({o[0] for o in options})
        needs = {(r, recv, send) for i, r in enumerate(order) for recv in ([1] if i == 0 else receiving)
                 for send in ([1] if i == len(order) - 1 else sending)}
        distinct = {(covers[r][0], recv, send) for r, recv, send in needs}  # regions alike share answers
        per_call = max(0.2, deadline.remaining_s() / (3 * max(len(distinct), 1)))
        answers = {key: key[0].max_window(target, per_call, seed, key[1], senders=key[2]) for key in distinct}
        found = {(r, recv, send): answers[covers[r][0], recv, send] for r, recv, send in needs}
        total, choice = _widest_tiling(order, found, options)
        if total >= L:
            picked = {r: found[r, choice[i - 1][1] if i > 0 else 1, choice[i][0] if i < len(order) - 1 else 1]
                      for i, r in enumerate(order)}
            placements = {r: expand_counts(covers[r][1], counts) for r, (_, counts) in picked.items()}
            ranges, windows = _layout(order, {r: w for r, (w, _) in picked.items()}, placements, L)
            lo, best = target, WindowPlan(ranges, windows, target)
        else:
            hi = target
    if best is not None:
        log.info("region windows %s at %.1f tokens/s", best.windows, best.target_tokens_per_s)
    return best


def _region_covers(topology: Topology, cost_model: CostModel, order: list[str],
                   by_region: dict[str, list[str]]) -> dict[str, tuple[RegionCover, list[Group]]]:
    """Per region, its window MILP (one per distinct (GPU mix, enters, leaves): regions alike
    share it, and its counts) and the region's own groups to expand those counts onto."""
    shared: dict[tuple, RegionCover] = {}
    out = {}
    for i, r in enumerate(order):
        groups = make_groups(topology, cost_model, [by_region[r]])
        enters, leaves = i > 0, i < len(order) - 1
        key = (tuple((g.gpu, len(g.nodes)) for g in groups), enters, leaves)
        if key not in shared:
            shared[key] = RegionCover(topology, cost_model, by_region[r], enters=enters, leaves=leaves)
        out[r] = (shared[key], groups)
    return out
