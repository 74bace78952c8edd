"""Region windows: each region of a geo-distributed cluster serves one contiguous block of layers.

Sits inside the solver beside milp.py: topology (regions, slow links) -> **windows** -> ranges ->
maxflow.py. plan.py uses it when every link between regions is slow (latency of at least
`REGION_LATENCY_MS`). A max-flow-optimal placement that ignores regions may send each token
across regions a dozen times (each crossing costs the link latency on every decode step);
confining each region to a window of layers bounds the crossings per token by the number of
regions, at a small cost in max-flow.

For a target F, each region's longest window is the most leading layers its nodes can cover to
height F (region_cover.py: stage blocks, then the rectangle MILP started from them). Bisection
on F, starting from windows in proportion to each region's capacity covered by the greedy
sweep, finds the largest F whose windows add up to L, until the shared Deadline. Regions with
the same GPU mix share one solver and its answers, so ten alike regions cost about one. A
target is dropped at once when the regions' layer bounds (configuration LP, window_stages.py)
add up to fewer than L. Regions are laid out with the coordinator's region first, each with a
non-empty window; a window longer than needed is trimmed and rectangles crossing its end are
shortened.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict

from helix_jax.costmodel import LINK_PLANNING_UTILIZATION, CostModel, best_layer_rate
from helix_jax.solver import heuristics
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.classflow import class_max_flow
from helix_jax.solver.deadline import Deadline
from helix_jax.solver.milp import Group, make_groups
from helix_jax.solver.patterns import PatternPool
from helix_jax.solver.region_cover import RegionWindow
from helix_jax.solver.window_stages import layer_bound
from helix_jax.topology import Topology

log = logging.getLogger(__name__)

REGION_LATENCY_MS = 10.0  # every inter-region link at least this slow: use windows
WINDOW_GAP = 5e-3  # bisection on F stops at this relative width


def slow_regions(topology: Topology) -> bool:
    """True when the cluster has several regions and every link between them is slow."""
    region = {n.name: n.region or "default" for n in topology.nodes}
    if len(set(region.values())) < 2:
        return False
    cross = [link.latency_ms for (a, b), link in topology.links.items() if a in region and b in region and region[a] != region[b]]
    return bool(cross) and min(cross) >= REGION_LATENCY_MS


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    ranges: dict[str, tuple[int, int]]
    windows: dict[str, tuple[int, int]]  # region -> [start, end)
    target_tokens_per_s: float


def _layout(
    order: list[str], widths: dict[str, int], placements: dict[str, dict[str, tuple[int, int]]], num_layers: int
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
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


def greedy_windows(
    topology: Topology, cost_model: CostModel, order: list[str], by_region: dict[str, list[str]]
) -> tuple[float, dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Fallback: windows in proportion to each region's capacity, each covered by the greedy sweep."""
    L = topology.model.num_layers
    tables = heuristics.node_tables(topology, cost_model)
    strength = {r: sum(best_layer_rate(tables[n]) for n in by_region[r] if n in tables) for r in order}
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
    return min(
        (classes.link_tokens_per_s(a, b) for a in range(len(region)) for b in range(len(region)) if region[a] != region[b]),
        default=math.inf,
    )


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
        return found[order[0], None, None][0], ()

    def width(i: int, before, after) -> float:  # region i between the choices at its two boundaries
        w = found[order[i], before, after][0]
        return w if w > 0 else -math.inf  # an empty window would join its neighbours unchecked

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


def plan_windows(
    topology: Topology,
    cost_model: CostModel,
    upper: float,
    time_limit_s: float | Deadline,
    seed: int = 0,
    classes: NodeClasses | None = None,
) -> WindowPlan | None:
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
        bounds = {r: layer_bound(covers[r][0].pool, target, deadline)[0] for r in order}
        if sum(math.floor(min(L, b) + 1e-6) for b in bounds.values()) < L:
            hi = target  # proven: the regions cannot cover L layers to the target, windows or not
            continue
        needs = {
            (r, before, after)
            for i, r in enumerate(order)
            for before in ([None] if i == 0 else options)
            for after in ([None] if i == len(order) - 1 else options)
        }
        distinct = sorted(
            {(covers[r][0], before, after) for r, before, after in needs},  # alike regions: one answer
            key=lambda k: (k[0].rank, k[1] or (0, 0), k[2] or (0, 0)),
        )
        answers = {}
        for left, key in enumerate(distinct):
            answers[key] = key[0].longest(target, key[1], key[2], pair_tokens_per_s, deadline.share(1 / (len(distinct) - left)), seed)
        found = {(r, before, after): answers[covers[r][0], before, after] for r, before, after in needs}
        total, choice = _widest_tiling(order, found, options)
        if total >= L:
            picked = {r: found[r, choice[i - 1] if i > 0 else None, choice[i] if i < len(order) - 1 else None] for i, r in enumerate(order)}
            placements = {r: covers[r][0].ranges(answer, covers[r][1]) for r, (_, answer) in picked.items()}
            ranges, windows = _layout(order, {r: w for r, (w, _) in picked.items()}, placements, L)
            lo, best = target, WindowPlan(ranges, windows, target)
        else:
            hi = target
    if best is not None:
        log.info("region windows %s at %.1f tokens/s", best.windows, best.target_tokens_per_s)
    return best


def _region_covers(
    topology: Topology, cost_model: CostModel, order: list[str], by_region: dict[str, list[str]]
) -> dict[str, tuple[RegionWindow, list[Group]]]:
    """Per region, its window solvers (one per distinct (GPU mix, enters, leaves): regions alike
    share them, their answers and one pattern pool per mix; mixes of the same GPU types share the
    patterns, which makes each pool richer) and the region's own groups."""
    shared: dict[tuple, RegionWindow] = {}
    pools: dict[tuple, PatternPool] = {}
    patterns_of: dict[tuple, tuple[list, set]] = {}
    out = {}
    for i, r in enumerate(order):
        groups = make_groups(topology, cost_model, [by_region[r]])
        mix = tuple((g.gpu, len(g.nodes)) for g in groups)
        key = (mix, i > 0, i < len(order) - 1)
        if key not in shared:
            shared[key] = RegionWindow(topology, cost_model, by_region[r], key[1], key[2], pools.get(mix))
            shared[key].rank = len(shared)  # a fixed order of work, whatever the hashing
            pool = pools[mix] = shared[key].pool
            kinds = tuple(g.gpu for g in groups)  # mixes of the same GPU types share their patterns
            pool.patterns, pool.known = patterns_of.setdefault(kinds, (pool.patterns, pool.known))
        out[r] = (shared[key], groups)
    return out
