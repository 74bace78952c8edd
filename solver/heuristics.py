"""Constructive heuristics and local search: a fast good placement before (or instead of) the MILP.

Sits inside the solver: topology + cost model -> **heuristics** -> ranges -> milp.py (start and
incumbent for the bisection) or, when the MILP has no time left, plan.py's fallback answer.

* `greedy_cover`: for a target F, sweep layers 0..L-1; wherever coverage is short of F, place
  the (node, k) whose clipped rectangle fills the most of the shortfall per unit of the node's
  own potential (max_k k * min(c(k), F)). Bisection on F finds the best F the sweep reaches.
* `improve_coverage`: local search on (min coverage, number of layers at the minimum), moving
  one node at a time to its best (start, k) or out of the placement. Exact objective under
  partial inference with non-binding links, O(L) per move.
* `raise_coverage`: deficit-driven local search with kicks, aiming at a target just above the
  current minimum coverage and raising it whenever the shortfall reaches zero (numpy windows
  make one node's best move O(k_max * L)).
Greedy works on kinds of nodes (same capacity table), the searches on one node per (kind,
range) in each round, so their cost grows with kinds and ranges, not with nodes; the searches
stop at their Deadline (deadline.py). The searches on the true max-flow are in repair.py.
All randomness comes from `random.Random(seed)`: same seed, same answer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

from helix_jax.costmodel import CostModel, best_layer_rate
from helix_jax.solver.deadline import Deadline
from helix_jax.topology import Topology

log = logging.getLogger(__name__)

Ranges = dict[str, tuple[int, int]]


def node_tables(topology: Topology, cost_model: CostModel) -> dict[str, list[float]]:
    """c(type, k) per node, for nodes that can hold at least one layer."""
    tables = {}
    for node in topology.nodes:
        table = cost_model.capacity_table(node.gpu)
        if table:
            tables[node.name] = table
    return tables


def stacked(ranges: Ranges, heights: dict[str, float], num_layers: int) -> list[float]:
    """Per layer, the summed height of the nodes holding it."""
    cover = [0.0] * num_layers
    for node, (s, e) in ranges.items():
        height = heights[node]
        for layer in range(s, e):
            cover[layer] += height
    return cover


def coverage(ranges: Ranges, tables: dict[str, list[float]], num_layers: int, clip: float = float("inf")) -> list[float]:
    """Per layer, the summed capacity c(type, k) (clipped at `clip`) of the nodes holding it."""
    return stacked(ranges, {node: min(tables[node][e - s - 1], clip) for node, (s, e) in ranges.items()}, num_layers)


def greedy_cover(tables: dict[str, list[float]], num_layers: int, target: float, fixed: Ranges | None = None) -> Ranges | None:
    """Cover every layer to `target` (module docstring), or None when the nodes run out.
    `fixed` ranges stay as they are; the sweep fills what they leave short."""
    ranges: Ranges = dict(fixed or {})
    deficit = [max(0.0, target - c) for c in coverage(ranges, tables, num_layers, target)]
    unused = sorted((n for n in tables if n not in ranges), key=lambda n: -best_layer_rate(tables[n]))
    kinds: dict[tuple[float, ...], list[str]] = {}  # identical nodes offer identical rectangles
    for node in unused:
        kinds.setdefault(tuple(tables[node]), []).append(node)
    taken = dict.fromkeys(kinds, 0)  # nodes of each kind already placed (they go in order)
    potential = {key: max(k * min(c, target) for k, c in enumerate(key, 1)) for key in kinds}
    layer = 0
    eps = 1e-9 * max(1.0, target)
    while layer < num_layers:
        if deficit[layer] <= eps:
            layer += 1
            continue
        best, best_score = None, -1.0
        for key in kinds:
            if taken[key] == len(kinds[key]):
                continue
            for k in range(1, min(len(key), num_layers - layer) + 1):
                height = min(key[k - 1], target)
                useful = sum(min(height, deficit[j]) for j in range(layer, layer + k))
                score = useful / potential[key]
                if score > best_score + 1e-12:
                    best, best_score = (key, k), score
        if best is None:
            return None
        key, k = best
        ranges[kinds[key][taken[key]]] = (layer, layer + k)
        taken[key] += 1
        height = min(key[k - 1], target)
        for j in range(layer, layer + k):
            deficit[j] = max(0.0, deficit[j] - height)
    return ranges


def best_greedy(
    tables: dict[str, list[float]], num_layers: int, upper: float, iterations: int = 30, fixed: Ranges | None = None
) -> Ranges | None:
    """Bisection on the target of `greedy_cover`; returns the best covering found."""
    lo, hi, best, best_value = 0.0, upper, None, -1.0
    for _ in range(iterations):
        target = 0.5 * (lo + hi)
        ranges = greedy_cover(tables, num_layers, target, fixed)
        if ranges is None:
            hi = target
            continue
        value = min(coverage(ranges, tables, num_layers))
        if value > best_value:
            best, best_value = ranges, value
        lo = max(target, value) if value < hi else target
        if hi - lo < 1e-4 * hi:
            break
    return best


def shuffled_rounds(names: list[str], rng: random.Random, deadline: Deadline, kind_of: Callable[[str], object]) -> Iterator[list[str]]:
    """Node orders for the rounds of a first-improvement local search while time is left (the
    caller stops when a round improves nothing): a fresh shuffle of `names` per round, keeping
    one node per `kind_of(node)`, since moving any one of identical nodes holding the same range
    is the same move (the rounds grow with kinds x ranges, not with nodes)."""
    while not deadline.expired():
        order = list(names)
        rng.shuffle(order)
        seen: set = set()
        yield [n for n in order if not (kind_of(n) in seen or seen.add(kind_of(n)))]


def improve_coverage(ranges: Ranges, tables: dict[str, list[float]], num_layers: int, deadline: Deadline, seed: int = 0) -> Ranges:
    """First-improvement local search on (min coverage, -#layers at the minimum)."""
    rng = random.Random(seed)
    current = dict(ranges)
    cover = coverage(current, tables, num_layers)

    def score(cov: list[float]) -> tuple[float, int]:
        low = min(cov)
        return (round(low, 9), -sum(1 for c in cov if c <= low + 1e-9))

    best_score = score(cover)
    for nodes in shuffled_rounds(sorted(tables), rng, deadline, lambda n: (tuple(tables[n]), current.get(n))):
        improved = False
        for node in nodes:
            old = current.get(node)
            base = list(cover)
            if old is not None:
                h_old = tables[node][old[1] - old[0] - 1]
                for j in range(*old):
                    base[j] -= h_old
            options = [None] + [(s, s + k) for k in range(1, len(tables[node]) + 1) for s in range(num_layers - k + 1)]
            for option in options:
                if option == old:
                    continue
                trial = list(base)
                if option is not None:
                    h = tables[node][option[1] - option[0] - 1]
                    for j in range(*option):
                        trial[j] += h
                s = score(trial)
                if s > best_score:
                    best_score, cover = s, trial
                    if option is None:
                        current.pop(node, None)
                    else:
                        current[node] = option
                    improved = True
                    break
            if deadline.expired():
                break
        if not improved:
            break
    return current


def raise_coverage(
    ranges: Ranges,
    tables: dict[str, list[float]],
    num_layers: int,
    deadline: Deadline,
    seed: int = 0,
    step: float = 0.005,
    upper: float = float("inf"),
    max_kicks_without_gain: int = 1000,
) -> Ranges:
    """Deficit-driven local search: aim at a target just above the current minimum coverage,
    minimise the total shortfall sum_l max(0, T - cover_l) (heights clipped at T) by moving one
    node at a time to its best position (or out), kick two random nodes when stuck, and raise T
    each time the shortfall reaches zero. Returns the best placement seen."""
    import numpy as np

    rng = random.Random(seed)
    names = sorted(tables)
    caps = {n: np.array(tables[n]) for n in names}
    best = dict(ranges)
    best_value = min(coverage(best, tables, num_layers))
    current = dict(best)
    target = best_value * (1 + step) if best_value > 0 else 1.0

    def cover_of(placed: Ranges) -> np.ndarray:
        return np.array(coverage(placed, tables, num_layers, target))

    cover = cover_of(current)
    stall = kicks_without_gain = 0
    while not deadline.expired() and kicks_without_gain < max_kicks_without_gain and best_value < upper * (1 - 1e-9):
        improved = False
        order = names[:]
        rng.shuffle(order)
        seen: set = set()  # one node per (table, range): identical nodes offer the same moves
        for node in order:
            kind = (tuple(tables[node]), current.get(node))
            if kind in seen:
                continue
            seen.add(kind)
            base = cover.copy()
            if node in current:
                s, e = current[node]
                base[s:e] -= min(caps[node][e - s - 1], target)
            short_before = np.maximum(0.0, target - base)
            best_move, best_gain = None, 1e-9
            old_gain = 0.0
            for k in range(1, min(len(caps[node]), num_layers) + 1):
                h = min(caps[node][k - 1], target)
                gain = short_before - np.maximum(0.0, target - base - h)  # per-layer shortfall removed
                window = np.convolve(gain, np.ones(k), mode="valid")  # window[s] = sum over [s, s+k)
                s = int(np.argmax(window))
                if node in current and current[node][1] - current[node][0] == k:
                    old_gain = window[current[node][0]]
                if window[s] > best_gain:
                    best_move, best_gain = (s, s + k), window[s]
            if best_move is not None and best_gain > old_gain + 1e-9 and best_move != current.get(node):
                current[node] = best_move
                s, e = best_move
                base[s:e] += min(caps[node][e - s - 1], target)
                cover = base
                improved = True
        if float(np.min(cover)) >= target * (1 - 1e-12):
            value = min(coverage(current, tables, num_layers))
            if value > best_value:
                best, best_value = dict(current), value
                kicks_without_gain = 0
            target = best_value * (1 + step)
            cover = cover_of(current)
            stall = 0
            continue
        if not improved:
            stall += 1
            kicks_without_gain += 1
            for node in rng.sample(names, min(2, len(names))):  # kick
                k = rng.randint(1, min(len(caps[node]), num_layers))
                s = rng.randint(0, num_layers - k)
                current[node] = (s, s + k)
            cover = cover_of(current)
            if stall > 200:
                current, stall = dict(best), 0
                cover = cover_of(current)
    return best
