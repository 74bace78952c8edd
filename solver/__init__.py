"""Layer placement (installed as `helix_jax.solver`): topology + cost model -> Placement.

Public API, imported lazily so that `helix_jax.solver.maxflow` users do not pay for cvxpy:
`plan`, `explain`, `METHODS` (solver/plan.py), `max_flow`, `placement_with_flows`
(solver/maxflow.py), `baseline_placement`, `BASELINES` (solver/baselines.py).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "plan": "plan",
    "explain": "plan",
    "METHODS": "plan",
    "Explanation": "plan",
    "max_flow": "maxflow",
    "placement_with_flows": "maxflow",
    "MaxFlowResult": "maxflow",
    "baseline_placement": "baselines",
    "BASELINES": "baselines",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"helix_jax.solver.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'helix_jax.solver' has no attribute {name!r}")
