"""A region's window made of stages: the longest prefix of layers a region covers to F, fast.

Sits inside the region-window search (regions.py), beside its rectangle MILP (RegionCover):
region's groups + target F + crossing nodes -> **stage_window** -> (window length, blocks) ->
regions.py (which hands the blocks to RegionCover as a start, so the rectangle MILP can only
improve on them).

The layers a region can cover to F are at most the configuration LP's value over its patterns
(patterns.py; Farley's bound when column generation stops early), so blocks are at most that
long. The window is a sequence of stage blocks (patterns.py) maximising the layers covered:
integers x[p, b] as in `stage_placement`, plus, where tokens arrive from another region, one
first block whose pattern has at least `receivers` nodes (they hold the window's first layer)
and, where they leave, one last block with at least `senders` nodes (they hold its last layer).
A node at a region boundary passes on at most what its links to the other side carry, so in
those blocks heights are also clipped at (nodes on the other side) x (planned link capacity):
on 1000 GPUs in ten regions a tall sender with twelve links otherwise caps the flow below the
target. Patterns for those blocks come from the same pricing knapsack with a cardinality row.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from helix_jax.solver.deadline import Deadline
from helix_jax.solver.highs_run import LinearModel
from helix_jax.solver.patterns import PatternPool, _price, block_usage, layer_bound

Blocks = list[tuple[np.ndarray, int]]


def stage_window(
    pool: PatternPool,
    target: float,
    deadline: Deadline,
    receivers: int = 0,
    senders: int = 0,
    seed: int = 0,
    first_cap: float = math.inf,
    last_cap: float = math.inf,
) -> tuple[int, Blocks]:
    """The longest window of stage blocks at `target` (module docstring): (layers, blocks in order).
    `receivers` / `senders`: nodes needed on its first / last layer (0: no crossing there), each
    counted at most `first_cap` / `last_cap` high (what its links to the other region carry)."""
    bound, duals = layer_bound(pool, target, deadline.share(0.6))
    if duals is None:
        return 0, []
    ends = [(need, cap) for need, cap in ((receivers, first_cap), (senders, last_cap)) if need]
    for need, cap in ends:  # patterns with enough nodes, and heights their links carry, for a crossing
        cost, _, pattern = _price(pool, target, duals, deadline, min_items=need, cap=cap)
        if math.isfinite(cost) and np.any(pattern):
            pool.add(pattern)
    columns = pool.covering(target)
    longest = int(min(pool.num_layers, math.floor(bound + 1e-6))) if math.isfinite(bound) else pool.num_layers
    if not columns or longest < 1 or deadline.expired():
        return 0, []
    lengths = np.arange(1, longest + 1)
    use = block_usage(pool, columns, lengths)  # [groups, P x lengths]
    span = np.tile(lengths, len(columns)).astype(float)
    lm = LinearModel()
    parts = [("body", lm.var(len(span), 0.0, float(longest), integer=True))]
    for name, need, cap in (("first", receivers, first_cap), ("last", senders, last_cap)):
        if need:
            h = np.minimum(pool.heights(target), cap)
            fits = np.array([p.sum() >= need and p @ h >= target * (1 - 1e-9) for p in columns])
            parts.append((name, lm.var(len(span), 0.0, np.repeat(fits, len(lengths)).astype(float), integer=True)))
    lm.rows([(v, span.reshape(1, -1)) for _, v in parts], upper=float(longest))
    lm.rows([(v, sp.csr_matrix(use)) for _, v in parts], upper=pool.sizes)
    for _, v in parts[1:]:
        lm.rows([(v, np.ones((1, len(span))))], 1.0, 1.0)
    result = lm.solve({v: span for _, v in parts}, maximize=True, time_limit_s=deadline.seconds(5.0), rel_gap=1e-6, seed=seed)
    if result.x is None:
        return 0, []
    chosen = {name: np.round(result.value(v)).astype(int) for name, v in parts}
    blocks: Blocks = []
    for name in ("first", "body", "last"):
        if name in chosen:
            counts = chosen[name]
            blocks += [
                (columns[j], int(lengths[b]))
                for index in np.nonzero(counts)[0]
                for j, b in [divmod(int(index), len(lengths))]
                for _ in range(counts[index])
            ]
    return int(round(result.objective)), blocks
