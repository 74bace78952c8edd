"""Run a cvxpy problem on HiGHS through highspy, with what cvxpy's HIGHS interface lacks.

The planner writes its MILPs in cvxpy (readable algebra); cvxpy canonicalises them into
`min c'x s.t. A x <= b` (equality rows first) with column bounds and integrality
(`get_problem_data(cp.HIGHS)`).
This module hands that data to highspy itself so it can (1) pass a start solution (a
heuristic incumbent), (2) read the MIP dual bound (the proof of how good the incumbent is)
and (3) set the time limit, gap, random seed and thread count. Nothing here knows about
placements. Variables must be declared with `bounds=` so that no bound becomes a row.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys

import cvxpy as cp
import highspy
import numpy as np

log = logging.getLogger(__name__)

_THREADS_SET = False


def _new_highs() -> highspy.Highs:
    """A Highs object; its one-time banner goes to the C-level stdout, which `--json` output
    must keep clean, so stdout is pointed at /dev/null while it is built."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.setOptionValue("output_flag", False)
    return h


@dataclasses.dataclass(frozen=True)
class HighsResult:
    status: str  # optimal | time_limit | infeasible | error | ...
    objective: float | None  # value of the cvxpy objective at the incumbent
    bound: float | None  # best proven bound of the cvxpy objective (upper for Maximize)
    values: dict[int, np.ndarray]  # cvxpy variable id -> value at the incumbent
    seconds: float

    def value(self, var: cp.Variable) -> np.ndarray:
        return self.values[var.id]


def solve(problem: cp.Problem, *, time_limit_s: float, rel_gap: float = 1e-4, seed: int = 0,
          start: dict[cp.Variable, np.ndarray] | None = None, relax: bool = False,
          threads: int = 0, options: dict | None = None) -> HighsResult:
    """Solve `problem` with HiGHS. `relax` drops integrality (LP relaxation)."""
    global _THREADS_SET
    maximize = isinstance(problem.objective, cp.Maximize)
    data, _, _ = problem.get_problem_data(cp.HIGHS)
    cols = data["param_prob"].var_id_to_col
    variables = {v.id: v for v in problem.variables()}
    a = data["A"].tocsc()
    num_rows, num_cols = a.shape
    inf = highspy.kHighsInf

    model = highspy.HighsModel()
    lp = model.lp_
    lp.num_col_, lp.num_row_ = num_cols, num_rows
    lp.col_cost_ = np.asarray(data["c"], dtype=float)
    lp.offset_ = 0.0
    row_upper = np.asarray(data["b"], dtype=float)
    row_lower = np.full(num_rows, -inf)
    num_eq = data["dims"].zero  # cvxpy puts equality rows first: b <= A x <= b
    row_lower[:num_eq] = row_upper[:num_eq]
    lp.row_lower_, lp.row_upper_ = row_lower, row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    lower, upper = data["lower_bounds"], data["upper_bounds"]
    col_lower = np.full(num_cols, -inf) if lower is None else np.asarray(lower, dtype=float).copy()
    col_upper = np.full(num_cols, inf) if upper is None else np.asarray(upper, dtype=float).copy()
    integer_cols = list(data["int_vars_idx"]) + list(data["bool_vars_idx"])
    for idx in data["bool_vars_idx"]:
        col_lower[idx], col_upper[idx] = max(col_lower[idx], 0.0), min(col_upper[idx], 1.0)
    lp.col_lower_, lp.col_upper_ = col_lower, col_upper
    if integer_cols and not relax:
        integrality = [highspy.HighsVarType.kContinuous] * num_cols
        for idx in integer_cols:
            integrality[idx] = highspy.HighsVarType.kInteger
        lp.integrality_ = integrality

    h = _new_highs()
    h.setOptionValue("time_limit", float(max(0.05, time_limit_s)))
    h.setOptionValue("mip_rel_gap", float(rel_gap))
    h.setOptionValue("random_seed", int(seed))
    if threads and not _THREADS_SET:  # HiGHS fixes its thread pool once per process
        h.setOptionValue("threads", int(threads))
        _THREADS_SET = True
    for name, value in (options or {}).items():
        h.setOptionValue(name, value)
    h.passModel(model)
    if start and not relax:
        x0 = np.zeros(num_cols)
        for var, value in start.items():
            offset = cols[var.id]
            x0[offset:offset + var.size] = np.asarray(value, dtype=float).ravel(order="F")
        sol = highspy.HighsSolution()
        sol.col_value = list(x0)
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    status_name = h.getModelStatus().name
    info = h.getInfo()
    seconds = h.getRunTime()
    status = {"kOptimal": "optimal", "kTimeLimit": "time_limit", "kInfeasible": "infeasible",
              "kUnboundedOrInfeasible": "infeasible"}.get(status_name, status_name)
    sign = -1.0 if maximize else 1.0
    values: dict[int, np.ndarray] = {}
    objective = None
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    if has_solution:
        x = np.asarray(h.getSolution().col_value)
        for var_id, offset in cols.items():
            var = variables[var_id]
            values[var_id] = x[offset:offset + var.size].reshape(var.shape, order="F")
        objective = sign * info.objective_function_value
    if relax or not integer_cols:
        bound = objective if status == "optimal" else None
    else:
        dual = info.mip_dual_bound
        bound = sign * dual if math.isfinite(dual) else None
    log.debug("highs %s in %.2fs: objective %s bound %s", status, seconds, objective, bound)
    return HighsResult(status, objective, bound, values, seconds)
