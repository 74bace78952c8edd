"""What the planner has found so far, and the answer made of it (plan.py's phases 2-5).

Sits inside plan.py's `helix` method: heuristics, MILP, repair and region windows -> **Candidates
and Bound** -> `finish` -> Placement -> scheduler. `Candidates` keeps every placement a phase
proposes with its true max-flow (on blocks of identical nodes, classflow.py); `Bound` keeps the
lowest proven upper bound and which proof gave it; `finish` (phase 5) picks the best candidate,
says whether it is proven optimal and computes its load-spreading flows. Reads the topology, the
cost model and the node classes; changes nothing outside these two objects.
"""

from __future__ import annotations

from typing import Any

from helix_jax.costmodel import CostModel
from helix_jax.placement import Placement
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.classflow import class_max_flow
from helix_jax.solver.deadline import Deadline
from helix_jax.solver.feasible import within_cap
from helix_jax.solver.maxflow import placement_with_flows
from helix_jax.topology import Topology

NUMERIC_GAP = 1e-5  # gaps below this are solver tolerance, reported as optimal


class Candidates:
    """Placements found so far with their true max-flow (on blocks of identical nodes). One past
    max_layers (sp fills memory) cannot start the MILP or the local search, so it waits in
    `past_cap` for the final comparison."""

    def __init__(self, topology: Topology, cost_model: CostModel, classes: NodeClasses, partial: bool) -> None:
        self.topology, self.cost_model, self.classes, self.partial = topology, cost_model, classes, partial
        self.within: dict[str, tuple[dict[str, tuple[int, int]], float]] = {}
        self.past_cap: dict[str, tuple[dict[str, tuple[int, int]], float]] = {}

    def consider(self, label: str, ranges: dict[str, tuple[int, int]] | None) -> None:
        if ranges:
            value = class_max_flow(self.topology, self.cost_model, self.classes, ranges, self.partial).value_tokens_per_s
            store = self.within if within_cap(self.topology, self.cost_model, ranges) else self.past_cap
            store[label] = (ranges, value)

    def best_label(self) -> str | None:
        return max(self.within, key=lambda k: self.within[k][1]) if self.within else None


class Bound:
    """The lowest proven upper bound so far, and which proof gave it."""

    def __init__(self, trivial: float) -> None:
        self.value = self.trivial = trivial
        self.source = "trivial"

    def tighten(self, value: float, source: str) -> None:
        if value < self.value:
            self.value, self.source = value, source


def finish(
    found: Candidates,
    classes: NodeClasses,
    proven: Bound,
    outcomes: list,
    zones: list,
    window_plan: Any,
    deadline: Deadline,
    search: Deadline,
    rel_gap: float,
    seed: int,
) -> Placement:
    """Phase 5: the best candidate, its bound and status, and the load-spreading flow."""
    deadline.note("final")
    candidates = {**found.within, **found.past_cap}
    eligible = ["region-windows"] if "region-windows" in candidates else list(candidates)
    best_label = max(eligible, key=lambda k: (candidates[k][1], k == "milp"))
    best_ranges, best_value = candidates[best_label]
    bound = max(proven.value, best_value)
    cut_short = search.expired() or any(o.status in ("time_limit", "no_solution") for o in outcomes) or not outcomes
    status = "optimal" if best_value >= bound * (1 - max(rel_gap, NUMERIC_GAP)) - 1e-9 else ("time_limit" if cut_short else "feasible")
    if best_label in found.past_cap and best_value > proven.value:
        status = "feasible"  # the bound covers placements within max_layers only
    main = outcomes[-1] if outcomes else None
    extra = {
        "source": best_label,
        "candidates": {k: round(v, 6) for k, (_, v) in sorted(candidates.items())},
        "milp_model_value": main.model_value if main else None,
        "lp_bound": main.lp_bound if main else proven.value,
        "trivial_bound": proven.trivial,
        "bound_source": proven.source,  # which proof gave the bound (docs/planner.md, "Scale")
        "zones": len(zones),
        "node_classes": len(classes),
        **({"region_windows": {r: list(w) for r, w in window_plan.windows.items()}} if window_plan else {}),
        "bisection_steps": [list(s) for s in main.steps] if main else [],
        "gap": (bound - best_value) / bound if bound > 0 else 0.0,
        "phases": [list(p) for p in deadline.phases],
        "seed": seed,
    }
    return placement_with_flows(
        found.topology,
        found.cost_model,
        best_ranges,
        "helix",
        found.partial,
        status=status,
        upper_bound_tokens_per_s=bound,
        extra=extra,
        classes=classes,
    )
