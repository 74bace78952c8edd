"""Latency SLO planning (solver/slo.py): hop and round-trip limits on every flow path, on small
clusters with explicit capacity tables whose constrained optimum is computed by hand."""

from __future__ import annotations

import pytest

from helix_jax.costmodel import CostModel
from helix_jax.errors import InfeasibleError
from helix_jax.scheduler import RequestSpec, Scheduler
from helix_jax.solver import slo_model
from helix_jax.solver.plan import plan
from helix_jax.solver.slo import _fastest_route, plan_slo
from helix_jax.solver.slo_model import Limits
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import topology_from_dict


def _chain_or_big():
    """4 layers: four one-layer nodes (100 tok/s each) chain into a 4-hop path; one node holding
    all four layers serves 50. Unconstrained (partial inference): 100 + 50 = 150."""
    return topology_from_dict(
        {
            "model": {"preset": "tiny", "num_layers": 4},
            "gpu_types": {
                "one": {"max_layers": 1, "capacity_tokens_per_s": [100]},
                "four": {"max_layers": 4, "capacity_tokens_per_s": [200, 120, 80, 50]},
            },
            "nodes": [{"name": f"a{i}", "gpu": "one"} for i in range(4)] + [{"name": "b", "gpu": "four"}],
        }
    )


def _routes(placement):
    return [(r["hops"], r["tokens_per_s"]) for r in placement.extra["routes"]]


def test_unconstrained_optimum_uses_the_long_path() -> None:
    topo = _chain_or_big()
    free = plan(topo, time_limit_s=10, rel_gap=1e-6, cost_model=CostModel(topo))
    assert free.objective_tokens_per_s == pytest.approx(150.0)
    assert free.upper_bound_tokens_per_s == pytest.approx(150.0)


def test_max_hops_forces_the_short_path_with_the_hand_computed_flow() -> None:
    topo = _chain_or_big()
    cm = CostModel(topo)
    placement = plan_slo(topo, Limits(max_hops=1), time_limit_s=10, cost_model=cm)
    validate_placement(placement, topo, cm)
    # one hop: only b holding [0, 4) at full load
    assert placement.objective_tokens_per_s == pytest.approx(50.0)
    assert all(len(hops) <= 1 for hops, _ in _routes(placement))
    assert placement.objective_tokens_per_s - 1e-6 <= placement.upper_bound_tokens_per_s <= 150.0 + 1e-6
    assert placement.upper_bound_tokens_per_s == pytest.approx(50.0)
    assert placement.extra["kv_fraction"] == {"b": 1.0}


def test_max_hops_four_recovers_the_unconstrained_optimum() -> None:
    topo = _chain_or_big()
    placement = plan_slo(topo, Limits(max_hops=4), time_limit_s=10, cost_model=CostModel(topo))
    assert placement.objective_tokens_per_s == pytest.approx(150.0)
    assert placement.upper_bound_tokens_per_s == pytest.approx(150.0, rel=1e-3)


def test_round_trip_limit_holds_on_every_route_and_bounds_are_ordered() -> None:
    topo = _chain_or_big()
    cm = CostModel(topo)
    items, sizes, _ = slo_model.aggregated_items(topo, cm)
    fastest, _ = _fastest_route(items, sizes, 4)
    limit = 1.5 * fastest
    placement = plan_slo(topo, Limits(tpot_s=limit), time_limit_s=10, cost_model=cm)
    levels = placement.extra["kv_fraction"]
    for hops, flow in _routes(placement):
        assert flow > 0
        assert slo_model.route_seconds(topo, cm, [tuple(h) for h in hops], levels, placement.ranges) <= limit + 1e-12
    assert placement.objective_tokens_per_s > 0
    assert placement.objective_tokens_per_s - 1e-6 <= placement.upper_bound_tokens_per_s <= 150.0 + 1e-6


def test_round_trip_below_the_fastest_path_is_one_clear_error() -> None:
    topo = _chain_or_big()
    cm = CostModel(topo)
    items, sizes, _ = slo_model.aggregated_items(topo, cm)
    fastest, _ = _fastest_route(items, sizes, 4)
    with pytest.raises(InfeasibleError, match=rf"smallest round trip any placement .* {1e3 * fastest:.1f} ms"):
        plan_slo(topo, Limits(tpot_s=0.5 * fastest), time_limit_s=10, cost_model=cm)
    with pytest.raises(InfeasibleError, match="fewest hops any placement"):
        plan_slo(_four_small(), Limits(max_hops=1), time_limit_s=10)


def _four_small():
    return topology_from_dict(
        {
            "model": {"preset": "tiny", "num_layers": 4},
            "gpu_types": {"two": {"max_layers": 2, "capacity_tokens_per_s": [90, 60]}},
            "nodes": [{"name": f"n{i}", "gpu": "two"} for i in range(3)],
        }
    )


def test_scheduler_routes_only_along_the_placement_routes() -> None:
    topo = _chain_or_big()
    placement = plan_slo(topo, Limits(max_hops=1), time_limit_s=10, cost_model=CostModel(topo))
    sched = Scheduler(placement, {n: 10**9 for n in placement.ranges})
    for i in range(5):
        sched.submit(RequestSpec(f"r{i}", 10, 10))
    for adm in sched.admit_ready():
        assert [h.node for h in adm.route] == ["b"]
