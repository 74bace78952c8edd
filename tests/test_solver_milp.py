"""The helix MILP reaches the optimum found by exhaustive search, with and without partial
inference, and its upper bound is never below that optimum."""

from __future__ import annotations

import itertools

import pytest

from helix_jax.costmodel import CostModel
from helix_jax.solver import milp
from helix_jax.solver.heuristics import coverage, node_tables
from helix_jax.solver.maxflow import max_flow
from helix_jax.solver.plan import plan
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import Topology, topology_from_dict


def brute_force(topo: Topology, cm: CostModel, partial_inference: bool) -> float:
    """Best true max-flow over every assignment of a range (or nothing) to every node."""
    L = topo.model.num_layers
    tables = node_tables(topo, cm)
    names = sorted(tables)
    options = [[None] + [(s, s + k) for k in range(1, len(tables[n]) + 1) for s in range(L - k + 1)] for n in names]
    best = 0.0
    for combo in itertools.product(*options):
        ranges = {n: r for n, r in zip(names, combo) if r is not None}
        if not ranges or min(coverage(ranges, tables, L)) <= best:  # max-flow <= min coverage
            continue
        best = max(best, max_flow(topo, cm, ranges, partial_inference).value_tokens_per_s)
    return best


def _cluster(num_layers: int, types: dict, nodes: list[tuple[str, str]], links: dict | None = None) -> Topology:
    return topology_from_dict(
        {
            "model": {"preset": "tiny", "num_layers": num_layers},
            "gpu_types": {name: {"max_layers": len(table), "capacity_tokens_per_s": table} for name, table in types.items()},
            "nodes": [{"name": n, "gpu": g} for n, g in nodes],
            **({"links": links} if links else {}),
        }
    )


CLUSTERS = {
    "mixed-5": lambda: _cluster(5, {"big": [90, 70, 40], "small": [50, 30]}, [("big0", "big"), ("sm0", "small"), ("sm1", "small")]),
    "uneven-4": lambda: _cluster(4, {"g": [60, 50, 30]}, [("a", "g"), ("b", "g"), ("c", "g")]),
    "three-types-6": lambda: _cluster(
        6, {"x": [100, 45, 35], "y": [40, 38], "z": [70, 30, 20, 12]}, [("x0", "x"), ("y0", "y"), ("z0", "z")]
    ),
    "overlap-3": lambda: _cluster(3, {"x": [89, 64, 22], "y": [38, 18]}, [("x0", "x"), ("x1", "x"), ("y0", "y"), ("y1", "y")]),
    "slow-pair-4": lambda: _cluster(
        4,
        {"g": [80, 60]},
        [("a", "g"), ("b", "g"), ("c", "g")],
        {"default": {"bandwidth": "1 GB/s"}, "pairs": [{"from": "a", "to": "b", "bandwidth": 5120}]},
    ),  # 20 tok/s
}


@pytest.mark.parametrize("partial", [True, False])
@pytest.mark.parametrize("name", sorted(CLUSTERS))
def test_milp_reaches_the_exhaustive_optimum(name: str, partial: bool) -> None:
    topo = CLUSTERS[name]()
    cm = CostModel(topo)
    optimum = brute_force(topo, cm, partial)
    placement = plan(topo, time_limit_s=20, rel_gap=1e-6, partial_inference=partial, seed=1, cost_model=cm)
    validate_placement(placement, topo, cm)
    assert placement.objective_tokens_per_s == pytest.approx(optimum, rel=1e-6)
    assert placement.upper_bound_tokens_per_s >= optimum * (1 - 1e-6)
    assert placement.partial_inference is partial
    assert placement.status == "optimal"


def test_partial_inference_is_worth_something_here() -> None:
    topo = CLUSTERS["overlap-3"]()
    cm = CostModel(topo)
    assert brute_force(topo, cm, True) == pytest.approx(102.0)
    assert brute_force(topo, cm, False) == pytest.approx(89.0)


def test_clipping_and_fixpoint_bounds_are_valid_and_tighter() -> None:
    topo = CLUSTERS["mixed-5"]()
    cm = CostModel(topo)
    optimum = brute_force(topo, cm, True)
    upper = milp.trivial_bound(topo, cm)
    zones = milp.find_zones(topo, cm, upper)
    groups = milp.make_groups(topo, cm, zones)
    model = milp.PlacementModel(topo, cm, groups, len(zones), True, upper)
    fixpoint = milp.lp_fixpoint(model, upper, deadline=float("inf"))
    assert optimum <= fixpoint + 1e-6 <= upper + 1e-6
    outcome = milp.solve_counts(model, upper, time_limit_s=10, rel_gap=1e-6, seed=0)
    assert outcome.status == "optimal"
    assert outcome.model_value == pytest.approx(optimum)
    ranges = milp.expand_counts(groups, outcome.counts)
    assert max_flow(topo, cm, ranges).value_tokens_per_s == pytest.approx(optimum)


def test_zones_follow_slow_links() -> None:
    # a-b is slow but both reach c over fast links: one zone (the true max-flow sees the pair)
    topo = CLUSTERS["slow-pair-4"]()
    cm = CostModel(topo)
    assert milp.find_zones(topo, cm, milp.trivial_bound(topo, cm)) == [["a", "b", "c"]]
    # the link-bound fixture: two nodes joined only by a slow link (50 vectors/s, 50 / (1 + 763/232)
    # decode tokens/s with their prompts) are two zones, and the zone model's bound is the link
    from pathlib import Path

    from helix_jax.topology import load_topology

    topo = load_topology(Path(__file__).resolve().parents[1] / "topologies" / "fixtures" / "link-bound.json")
    cm = CostModel(topo)
    assert milp.find_zones(topo, cm, milp.trivial_bound(topo, cm)) == [["a"], ["b"]]
    placement = plan(topo, time_limit_s=10, cost_model=cm)
    link = 50.0 / (1 + 763 / 232)
    assert placement.objective_tokens_per_s == pytest.approx(link)
    assert placement.upper_bound_tokens_per_s == pytest.approx(link, rel=1e-3)
    assert placement.status == "optimal"


def test_same_seed_same_placement() -> None:
    topo = CLUSTERS["three-types-6"]()
    first = plan(topo, time_limit_s=10, seed=3)
    second = plan(topo, time_limit_s=10, seed=3)
    assert first.ranges == second.ranges and first.flows == second.flows


def test_zone_to_zone_cut_bounds_the_crossings() -> None:
    """Region a (the coordinator's; one-layer nodes) must hand every token to region b and take it
    back: one 10 tok/s link a-0 -> b-0 and one b-0 -> a-1, every other cross link 1 B/s. Per
    boundary the zone model allows best link x node pairs (20); the zone-to-zone cut, the summed
    capacity of the links from a to b, caps all crossings at ~10, the enumerated optimum."""
    from helix_jax.costmodel import WorkloadShape

    fast = {"bandwidth": 2560, "one_way": True}  # 10 tiny-model vectors/s
    topo = topology_from_dict(
        {
            "model": {"preset": "tiny", "num_layers": 4},
            "gpu_types": {
                "one": {"max_layers": 1, "capacity_tokens_per_s": [100]},
                "two": {"max_layers": 2, "capacity_tokens_per_s": [100, 80]},
            },
            "coordinator": {"region": "a"},
            "nodes": [{"name": "a", "gpu": "one", "region": "a", "count": 2}, {"name": "b", "gpu": "two", "region": "b", "count": 2}],
            "links": {
                "default": {"bandwidth": 1, "latency_ms": 50},
                "within_region": {"default": {"bandwidth": "1 GB/s", "latency_ms": 1}},
                "pairs": [{"from": "coordinator", "to": n, "bandwidth": "1 GB/s"} for n in ("a-0", "a-1")]
                + [{"from": "a-0", "to": "b-0", **fast}, {"from": "b-0", "to": "a-1", **fast}],
            },
        }
    )
    cm = CostModel(topo, WorkloadShape(0, 100))
    optimum = brute_force(topo, cm, True)
    assert optimum == pytest.approx(10.0, abs=0.01)
    placement = plan(topo, time_limit_s=10, cost_model=cm, region_windows=False)
    assert placement.extra["zones"] == 2
    assert placement.objective_tokens_per_s == pytest.approx(optimum)
    assert optimum * (1 - 1e-9) <= placement.upper_bound_tokens_per_s <= 1.01 * optimum  # 20 without the cut
