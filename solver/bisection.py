"""Solving the placement MILP: LP fix-point bound, then bisection on the clipping target.

Sits between milp.py (the model) and plan.py / shop_model.py (the drivers): a PlacementModel and
a Deadline -> **lp_fixpoint, solve_counts** -> counts of rectangles with a proven upper bound.
Both stop when the deadline says so and return what they have: every value `lp_fixpoint`
passes through is an upper bound, and `solve_counts` keeps the best counts and the lowest
bound proven so far.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

from helix_jax.solver.deadline import Deadline
from helix_jax.solver.milp import PlacementModel, Rect

log = logging.getLogger(__name__)

LP_FIXPOINT_REL_TOL = 1e-4  # stop the T <- LP(T) iteration when it falls less than this
LP_FIXPOINT_MAX_ITER = 40
MAX_BISECTION_STEPS = 100  # a safety net; each step at least halves the open interval
MIN_STEP_S = 0.2  # a HiGHS call shorter than this proves nothing on the larger models


@dataclasses.dataclass
class MilpOutcome:
    counts: dict[Rect, int]
    model_value: float  # the model's z at the incumbent counts
    upper_bound: float  # proven bound on the true optimum
    status: str  # optimal | time_limit | no_solution
    lp_bound: float
    target: float
    seconds: float
    steps: list = dataclasses.field(default_factory=list)  # (target, status, seconds) per step


def _as_deadline(deadline: Deadline | float | None, time_limit_s: float | None) -> Deadline:
    """A Deadline from a Deadline, an absolute `time.monotonic()` time, or a time limit."""
    if isinstance(deadline, Deadline):
        return deadline
    if deadline is not None:
        return Deadline(max(0.0, deadline - time.monotonic()) if math.isfinite(deadline) else math.inf)
    return Deadline(math.inf if time_limit_s is None else time_limit_s)


def lp_fixpoint(model: PlacementModel, start_target: float, deadline: Deadline | float) -> float:
    """Iterate T <- LP(T) from a valid upper bound; every value is a valid upper bound. An LP that
    the deadline cuts short proves nothing, so it leaves T as it was."""
    deadline = _as_deadline(deadline, None)
    target = start_target
    for _ in range(LP_FIXPOINT_MAX_ITER):
        if deadline.expired():
            return target
        value = model.lp_value(target, time_limit_s=deadline.seconds(60.0))
        if value >= target * (1 - LP_FIXPOINT_REL_TOL):
            return min(value, target)
        target = value
    return target


def solve_counts(
    model: PlacementModel,
    upper: float,
    *,
    time_limit_s: float | None = None,
    deadline: Deadline | None = None,
    rel_gap: float,
    seed: int,
    start_counts: dict[Rect, int] | None = None,
    fixpoint_share: float = 0.2,
) -> MilpOutcome:
    """Bisection on the target F between the incumbent `lo` and a proven bound `hi`.

    Each step asks HiGHS whether every layer can be covered to height F with heights clipped at
    F (z = F): "infeasible" proves F* < F; a solution raises `lo`. When that question runs out
    of time, a second try maximises z <= F from the incumbent: it raises `lo` to whatever it
    finds, and its dual bound, when below F, lowers `hi`. After a step that proved nothing the
    next target lies halfway up to `hi` (infeasibility is easier to prove further up).
    `upper` must be a proven bound; `fixpoint_share` of the time goes to tightening it first
    (0 when the caller already ran the fix-point).
    """
    deadline = _as_deadline(deadline, time_limit_s)
    t0 = time.monotonic()
    hi = lp_fixpoint(model, upper, deadline.share(fixpoint_share)) if fixpoint_share > 0 else upper
    lp_bound = hi
    best_counts = dict(start_counts or {})
    lo = model.evaluate(best_counts, upper)[0] if best_counts else 0.0
    steps: list[tuple[float, str, float]] = []
    unresolved: float | None = None  # a target whose step proved nothing
    reached = lo  # highest target shown reachable (lo may trail it by solver tolerances)

    def accept(result) -> None:
        nonlocal lo, best_counts
        counts = model.counts_of(result.value(model.n))
        value = model.evaluate(counts, upper)[0]
        if value > lo:
            lo, best_counts = value, counts

    def room() -> bool:  # HiGHS may not stop a MIP before its root is done: a step needs room for that
        return deadline.remaining_s() > max(MIN_STEP_S, 2 * model.lp_seconds, model.mip_floor_s)

    def overran(result, slice_s: float) -> None:  # remember how long this model's MIP took to stop
        if result.seconds > 1.2 * slice_s + 0.5:
            model.mip_floor_s = max(model.mip_floor_s, result.seconds)

    while hi > reached * (1 + rel_gap) + 1e-9 and room() and len(steps) < MAX_BISECTION_STEPS:
        if unresolved is not None:
            target = 0.5 * (unresolved + hi)
        else:
            target = 0.5 * (reached + hi) if reached > 0 else 0.75 * hi
        target = max(target, reached * (1 + 0.5 * rel_gap))
        remaining = deadline.remaining_s()
        slice_s = max(MIN_STEP_S, 0.25 * remaining if remaining > 4 else remaining)
        model.set_target(target, require=target)
        result = model.solve(slice_s, rel_gap=1.0, seed=seed)
        overran(result, slice_s)
        steps.append((round(target, 4), "feasibility:" + result.status, round(result.seconds, 2)))
        if result.status == "infeasible":
            hi, unresolved = target, None
            continue
        if result.objective is not None:
            accept(result)
            reached, unresolved = max(reached, lo, target), None
            continue
        if not room():
            break
        # no answer: look for better incumbents below the target (and perhaps a bound)
        start = model.evaluate(best_counts, target)[1] if best_counts else None
        model.set_target(target)
        slice_s = min(slice_s, deadline.remaining_s())
        result = model.solve(slice_s, rel_gap=rel_gap, seed=seed, start=start)
        overran(result, slice_s)
        steps.append((round(target, 4), "maximise:" + result.status, round(result.seconds, 2)))
        if result.objective is not None:
            accept(result)
            reached = max(reached, lo)
        if result.bound is not None and result.bound < target * (1 - 1e-7):
            hi, unresolved = min(hi, max(result.bound, lo)), None
        elif unresolved is not None and target >= hi * (1 - rel_gap):
            break
        else:
            unresolved = target
    log.info("milp bisection steps: %s", steps)
    status = "optimal" if hi <= reached * (1 + rel_gap) + 1e-9 else "time_limit"
    if not best_counts:
        status = "no_solution"
    return MilpOutcome(best_counts, lo, max(hi, lo), status, lp_bound, hi, time.monotonic() - t0, steps)
