"""Linear models in sparse blocks, solved on HiGHS (highspy): the planner's MILPs and LPs.

Sits under milp.py, regions.py and shop_model.py: their rows (numpy / scipy.sparse blocks) ->
**LinearModel** -> HiGHS -> values, objective and the MIP dual bound (the proof of how good the
incumbent is). Nothing here knows about placements.

Why not a modelling layer: the planner solves the same model at many clipping targets, and
only some coefficients change. cvxpy's parametrised compile of the four-zone model took 25 s
and 3 GB (200 GPUs, four regions) before the first solve; here a block may be a callable that
returns its matrix for the current parameters, and a solve only re-assembles the arrays
(milliseconds). A start solution (a heuristic incumbent), the time limit, gap, random seed and
thread count are passed straight to HiGHS.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable

import highspy
import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

INF = highspy.kHighsInf
Matrix = sp.spmatrix | np.ndarray
Block = Matrix | Callable[[], Matrix]


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
class Var:
    """A block of `size` columns starting at column `offset`."""

    offset: int
    size: int

    @property
    def cols(self) -> slice:
        return slice(self.offset, self.offset + self.size)


@dataclasses.dataclass(frozen=True)
class HighsResult:
    status: str  # optimal | time_limit | infeasible | error | ...
    objective: float | None  # objective at the incumbent (in the model's sense: max or min)
    bound: float | None  # best proven bound of the objective (upper for maximise)
    x: np.ndarray | None  # all columns at the incumbent
    seconds: float
    row_duals: np.ndarray | None = None  # LP only: d objective / d row bound (model's sense)

    def value(self, var: Var) -> np.ndarray:
        return self.x[var.cols]


class LinearModel:
    """Columns with bounds and integrality, rows `lower <= sum_j A_j x_j <= upper` made of blocks."""

    def __init__(self) -> None:
        self.col_lower: list[np.ndarray] = []
        self.col_upper: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.num_cols = self.num_rows = 0
        self.blocks: list[tuple[int, int, Block]] = []  # (row offset, col offset, matrix)
        self.row_lower: list[np.ndarray] = []
        self.row_upper: list[np.ndarray] = []
        self._lo = self._hi = None

    def var(self, size: int, lower=0.0, upper=INF, integer: bool = False) -> Var:
        v = Var(self.num_cols, size)
        self.col_lower.append(np.broadcast_to(np.asarray(lower, dtype=float), size).copy())
        self.col_upper.append(np.broadcast_to(np.asarray(upper, dtype=float), size).copy())
        self.integer.append(np.full(size, integer))
        self.num_cols += size
        self._lo = self._hi = None
        return v

    def rows(self, terms: list[tuple[Var, Block]], lower=-INF, upper=INF) -> slice:
        """Add rows `lower <= sum over terms of A x_var <= upper`; A may be a callable evaluated at
        each solve (coefficients that follow a parameter). Returns the rows' slice."""
        first = terms[0][1]
        size = (first() if callable(first) else first).shape[0]
        for var, block in terms:
            self.blocks.append((self.num_rows, var.offset, block))
        self.row_lower.append(np.broadcast_to(np.asarray(lower, dtype=float), size).copy())
        self.row_upper.append(np.broadcast_to(np.asarray(upper, dtype=float), size).copy())
        self.num_rows += size
        return slice(self.num_rows - size, self.num_rows)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The (mutable) column bound arrays: set `lo[var.cols]` to fix or free columns."""
        if self._lo is None:
            self._lo, self._hi = np.concatenate(self.col_lower), np.concatenate(self.col_upper)
        return self._lo, self._hi

    def set_row_bounds(self, rows: slice, lower=-INF, upper=INF) -> None:
        lo, hi = np.concatenate(self.row_lower), np.concatenate(self.row_upper)
        lo[rows], hi[rows] = lower, upper
        self.row_lower, self.row_upper = [lo], [hi]

    def _matrix(self) -> sp.csc_matrix:
        rows, cols, vals = [], [], []
        for r0, c0, block in self.blocks:
            m = sp.coo_matrix(block() if callable(block) else block)
            rows.append(m.row + r0)
            cols.append(m.col + c0)
            vals.append(m.data)
        coo = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(self.num_rows, self.num_cols))
        return coo.tocsc()

    def solve(
        self,
        objective: dict[Var, np.ndarray | float],
        *,
        maximize: bool,
        time_limit_s: float,
        rel_gap: float = 1e-4,
        seed: int = 0,
        start: np.ndarray | None = None,
        relax: bool = False,
        options: dict | None = None,
    ) -> HighsResult:
        """Solve with HiGHS; `relax` drops integrality (LP relaxation); `start`: all columns."""
        cost = np.zeros(self.num_cols)
        for var, coef in objective.items():
            cost[var.cols] = coef
        sign = -1.0 if maximize else 1.0
        lo, hi = self.bounds()
        a = self._matrix()
        model = highspy.HighsModel()
        lp = model.lp_
        lp.num_col_, lp.num_row_ = self.num_cols, self.num_rows
        lp.col_cost_ = sign * cost
        lp.col_lower_, lp.col_upper_ = lo, hi
        lp.row_lower_, lp.row_upper_ = np.concatenate(self.row_lower), np.concatenate(self.row_upper)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        integer = np.concatenate(self.integer)
        mip = bool(integer.any()) and not relax
        if mip:
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in integer]
        h = _new_highs()
        h.setOptionValue("time_limit", float(max(0.05, time_limit_s)))
        h.setOptionValue("mip_rel_gap", float(rel_gap))
        h.setOptionValue("random_seed", int(seed))
        for name, value in (options or {}).items():
            h.setOptionValue(name, value)
        h.passModel(model)
        if start is not None and mip:
            sol = highspy.HighsSolution()
            sol.col_value = list(np.asarray(start, dtype=float))
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        return _result(h, sign, mip)


def _result(h: highspy.Highs, sign: float, mip: bool) -> HighsResult:
    status_name = h.getModelStatus().name
    info = h.getInfo()
    status = {"kOptimal": "optimal", "kTimeLimit": "time_limit", "kInfeasible": "infeasible", "kUnboundedOrInfeasible": "infeasible"}.get(
        status_name, status_name
    )
    x = objective = None
    if info.primal_solution_status == 2:  # kSolutionStatusFeasible
        x = np.asarray(h.getSolution().col_value)
        objective = sign * info.objective_function_value
    if mip:
        dual = info.mip_dual_bound
        bound = sign * dual if np.isfinite(dual) else None
    else:
        bound = objective if status == "optimal" else None
    duals = None
    if not mip and status == "optimal" and info.dual_solution_status == 2:
        duals = sign * np.asarray(h.getSolution().row_dual)
    log.debug("highs %s in %.2fs: objective %s bound %s", status, h.getRunTime(), objective, bound)
    return HighsResult(status, objective, bound, x, h.getRunTime(), duals)
