"""Planner scale (issue 21): models grow with node classes, not nodes; block max-flow equals node
max-flow; one deadline stops every phase; the pattern bound never excludes a reachable target."""

from __future__ import annotations

import itertools

import pytest

from helix_jax.costmodel import CostModel
from helix_jax.solver import milp, patterns
from helix_jax.solver.baselines import BASELINES, baseline_ranges
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.classflow import class_max_flow
from helix_jax.solver.deadline import Deadline, StepClock
from helix_jax.solver.heuristics import coverage, node_tables
from helix_jax.solver.maxflow import max_flow
from helix_jax.solver.plan import NUMERIC_GAP, plan
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import topology_from_dict

TYPES = {"big": [100, 70, 45, 30], "mid": [60, 40, 25], "small": [35, 20]}


def _cluster(per_type: int, regions: int = 1, num_layers: int = 8, pairs: list | None = None):
    """`per_type` nodes of each of TYPES in each of `regions` regions (10 MB/s, 50 ms between)."""
    links = {"default": {"bandwidth": "10 MB/s", "latency_ms": 50}, "within_region": {"default": {"bandwidth": "1 GB/s", "latency_ms": 1}}}
    if pairs:
        links["pairs"] = pairs
    return topology_from_dict(
        {
            "model": {"preset": "tiny", "num_layers": num_layers},
            "gpu_types": {g: {"max_layers": len(t), "capacity_tokens_per_s": t} for g, t in TYPES.items()},
            "coordinator": {"region": "r0"},
            "nodes": [{"name": f"r{r}-{g}", "gpu": g, "region": f"r{r}", "count": per_type} for r in range(regions) for g in TYPES],
            "links": links,
        }
    )


def _model_size(topo) -> tuple[int, int, int]:
    cm = CostModel(topo)
    classes = NodeClasses(topo, cm)
    zones = classes.zones(milp.trivial_bound(topo, cm))
    model = milp.PlacementModel(topo, cm, milp.make_groups(topo, cm, zones), len(zones), True, classes=classes)
    return len(classes), model.lp.num_cols, model.lp.num_rows


@pytest.mark.parametrize("regions", [1, 2])
def test_model_size_follows_classes_not_nodes(regions: int) -> None:
    small, large = _cluster(5, regions), _cluster(50, regions)  # 15 and 150 nodes per region
    assert len(large.nodes) == 10 * len(small.nodes)
    assert _model_size(small) == _model_size(large)
    assert _model_size(large)[0] == 3 * regions  # one class per (type, region)


def test_a_node_with_its_own_link_is_its_own_class() -> None:
    topo = _cluster(4, pairs=[{"from": "r0-big-1", "to": "r0-mid-0", "bandwidth": "1 kB/s"}])
    classes = NodeClasses(topo, CostModel(topo))
    by_node = {n: tuple(c.nodes) for c in classes.classes for n in c.nodes}
    assert by_node["r0-big-1"] == ("r0-big-1",) and by_node["r0-mid-0"] == ("r0-mid-0",)
    assert by_node["r0-big-0"] == ("r0-big-0", "r0-big-2", "r0-big-3")
    assert len(classes) == 5


@pytest.mark.parametrize("regions", [1, 2])
def test_block_max_flow_is_the_node_max_flow(regions: int) -> None:
    topo = _cluster(6, regions)
    cm = CostModel(topo)
    classes = NodeClasses(topo, cm)
    for method in BASELINES:
        ranges = baseline_ranges(topo, cm, method)
        node, block = max_flow(topo, cm, ranges, balance=True), class_max_flow(topo, cm, classes, ranges, balance=True)
        assert block.value_tokens_per_s == pytest.approx(node.value_tokens_per_s, rel=1e-9)
        # the load-spreading flow is the same QP: identical nodes carry identical flow
        assert block.node_flows == pytest.approx(node.node_flows, rel=1e-4, abs=1e-4)


def test_planned_placement_is_valid_and_under_its_bound() -> None:
    topo = _cluster(40, regions=2)  # 240 nodes; the deadline stops the search, not the test's patience
    cm = CostModel(topo)
    clock = StepClock()
    placement = plan(topo, cost_model=cm, deadline=Deadline(4.0, clock=_ticking(clock, 0.002)))
    validate_placement(placement, topo, cm)
    assert max_flow(topo, cm, placement.ranges).value_tokens_per_s == pytest.approx(placement.objective_tokens_per_s)
    for method in BASELINES:  # every placement of this cluster lies under the proven bound
        flow = max_flow(topo, cm, baseline_ranges(topo, cm, method)).value_tokens_per_s
        assert flow <= placement.upper_bound_tokens_per_s * (1 + 1e-9)


def _ticking(clock: StepClock, tick_s: float):
    """A clock that advances `tick_s` per reading: loops end after a fixed number of steps."""

    def read() -> float:
        clock.jump(tick_s)
        return clock()

    return read


@pytest.mark.parametrize(
    "phase, regions", [("baseline:swarm", 1), ("local-search", 1), ("lp-fixpoint", 1), ("patterns", 1), ("region-windows", 2)]
)
def test_a_deadline_expiring_in_a_phase_stops_there(phase: str, regions: int) -> None:
    topo = _cluster(3, regions, num_layers=10)
    cm = CostModel(topo)
    clock = StepClock()
    deadline = Deadline(30.0, clock=_ticking(clock, 1e-4), on_enter=lambda entered: clock.jump(1e6) if entered == phase else None)
    placement = plan(topo, cost_model=cm, deadline=deadline, rel_gap=1e-9)
    validate_placement(placement, topo, cm)
    names = [name for name, _ in placement.extra["phases"]]
    assert names[-2:] == [phase, "final"]  # nothing ran after the phase the limit expired in
    assert placement.upper_bound_tokens_per_s >= placement.objective_tokens_per_s
    assert "region_windows" not in placement.extra  # the windows never ran
    # "optimal" only where the bound so far proves it (a free placement may, once windows are cut)
    assert (placement.status == "optimal") == (placement.extra["gap"] <= NUMERIC_GAP)
    if regions == 1:  # here the phases that would close the gap did not run
        assert placement.status == "time_limit"


def test_without_expiry_the_same_cluster_is_solved() -> None:
    topo = _cluster(3, num_layers=10)
    clock = StepClock()
    placement = plan(topo, deadline=Deadline(30.0, clock=_ticking(clock, 1e-4)), rel_gap=1e-6)
    assert placement.status == "optimal"
    assert "bisection" in [name for name, _ in placement.extra["phases"]]


def _optimum(topo, cm) -> float:
    """Best min coverage over every assignment (= max-flow here: one region, fast links)."""
    L, tables = topo.model.num_layers, node_tables(topo, cm)
    names = sorted(tables)
    options = [[None] + [(s, s + k) for k in range(1, len(tables[n]) + 1) for s in range(L - k + 1)] for n in names]
    best = 0.0
    for combo in itertools.product(*options):
        ranges = {n: r for n, r in zip(names, combo) if r is not None}
        if ranges:
            best = max(best, min(coverage(ranges, tables, L)))
    return best


def test_pattern_bound_never_excludes_a_reachable_target() -> None:
    topo = topology_from_dict(
        {
            "model": {"preset": "tiny", "num_layers": 4},
            "gpu_types": {
                "x": {"max_layers": 3, "capacity_tokens_per_s": [90, 60, 35]},
                "y": {"max_layers": 2, "capacity_tokens_per_s": [50, 30]},
            },
            "nodes": [{"name": "x", "gpu": "x", "count": 2}, {"name": "y", "gpu": "y", "count": 3}],
        }
    )
    cm = CostModel(topo)
    optimum = _optimum(topo, cm)
    pool = patterns.PatternPool(milp.make_groups(topo, cm, [list(topo.node_names)]), topo.model.num_layers)
    assert patterns.out_of_reach(pool, optimum, Deadline(10.0)) is False
    reached, bound, ranges = patterns.search(pool, 0.0, milp.trivial_bound(topo, cm), Deadline(10.0), 1e-4)
    assert reached <= optimum * (1 + 1e-9) <= bound * (1 + 1e-9)
    assert ranges is not None and min(coverage(ranges, node_tables(topo, cm), 4)) >= reached * (1 - 1e-9)
