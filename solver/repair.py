"""Local searches on the true max-flow: repair a placement where links the model did not see bind.

Sits after the MILP expansion in plan.py: counts -> ranges -> **repair** -> ranges whose true
max-flow (classflow.py) is at least what they started with. Both searches are first-improvement
and stop at their Deadline; each evaluation is a max-flow on blocks of identical nodes.

* `swap_classes`: a group of the MILP may hold nodes of several classes (same GPU type and zone,
  different links); the expansion hands them rectangles in name order, which may put the node
  with the slow link where the crossing is. Swapping the ranges of two nodes of the same GPU
  type but different classes changes no coverage, only which links the flow can use.
* `improve_flow`: move one node by one layer or resize it by one (or place an unused one at its
  maximum); when a round of such moves finds nothing, one round that relocates a node to any
  range (a plateau of small moves often hides a better range two moves away). For clusters
  whose links bind or without partial inference.
Same seed, same answer (`random.Random(seed)`).
"""

from __future__ import annotations

import random

from helix_jax.costmodel import CostModel
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.classflow import class_max_flow
from helix_jax.solver.deadline import Deadline
from helix_jax.solver.heuristics import Ranges, coverage, node_tables, shuffled_rounds
from helix_jax.topology import Topology


def swap_classes(
    topology: Topology, cost_model: CostModel, classes: NodeClasses, ranges: Ranges, partial_inference: bool, deadline: Deadline
) -> tuple[Ranges, float]:
    """Swap ranges between nodes of one GPU type and different classes while max-flow rises."""
    current = dict(ranges)
    value = class_max_flow(topology, cost_model, classes, current, partial_inference).value_tokens_per_s
    improved = True
    while improved and not deadline.expired():
        improved = False
        blocks: dict[tuple[int, tuple[int, int] | None], str] = {}  # one node per (class, range)
        for node in topology.node_names:
            blocks.setdefault((classes.index[node], current.get(node)), node)
        reps = sorted(blocks.items(), key=lambda kv: (kv[0][0], kv[0][1] or (-1, -1)))
        for i, ((ca, ra), a) in enumerate(reps):
            for (cb, rb), b in reps[i + 1 :]:
                if deadline.expired():
                    return current, value
                if ca == cb or ra == rb or classes.classes[ca].gpu != classes.classes[cb].gpu:
                    continue
                trial = dict(current)
                for node, rng in ((a, rb), (b, ra)):
                    if rng is None:
                        trial.pop(node, None)
                    else:
                        trial[node] = rng
                v = class_max_flow(topology, cost_model, classes, trial, partial_inference).value_tokens_per_s
                if v > value * (1 + 1e-9):
                    current, value, improved = trial, v, True
                    break
            if improved:
                break
    return current, value


def improve_flow(
    topology: Topology,
    cost_model: CostModel,
    classes: NodeClasses,
    ranges: Ranges,
    partial_inference: bool,
    deadline: Deadline,
    seed: int = 0,
) -> tuple[Ranges, float]:
    """Local search on the true max-flow: move one node by one layer or resize it by one."""
    rng = random.Random(seed)
    tables = node_tables(topology, cost_model)
    L = topology.model.num_layers
    current = dict(ranges)

    def flow(placed: Ranges) -> float:
        return class_max_flow(topology, cost_model, classes, placed, partial_inference).value_tokens_per_s

    value = flow(current)
    wide = False  # after a round of small moves finds nothing: one round of relocations
    for nodes in shuffled_rounds(sorted(tables), rng, deadline, lambda n: (classes.index[n], current.get(n))):
        improved = False
        for node in nodes:
            if deadline.expired():
                break
            top = len(tables[node])
            if node in current and not wide:
                s, e = current[node]
                options = [(s + ds, e + de) for ds, de in ((-1, -1), (1, 1), (0, 1), (0, -1), (-1, 0), (1, 0))]
            elif node in current:
                options = [(s, s + k) for k in range(1, top + 1) for s in range(L - k + 1)]
            else:
                options = [(s, s + top) for s in range(0, L - top + 1)]
            for s, e in options:
                if not (0 <= s < e <= L and e - s <= top) or current.get(node) == (s, e):
                    continue
                trial = {**current, node: (s, e)}
                if min(coverage(trial, tables, L)) <= 0:
                    continue
                v = flow(trial)
                if v > value * (1 + 1e-9):
                    current, value, improved = trial, v, True
                    break
        if not improved and wide:
            break
        wide = not improved
    return current, value
