"""Baseline placements are valid, follow their rules, and carry their true max-flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import ConfigError, InfeasibleError
from helix_jax.solver.baselines import BASELINES, baseline_placement, sp_pipelines, swarm_ranges
from helix_jax.solver.maxflow import max_flow
from helix_jax.solver.plan import explain, plan
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import load_topology, topology_from_dict

ROOT = Path(__file__).resolve().parents[1] / "topologies"
SMALL = ["cpu-tiny.json", "fixtures/two-pipelines.json", "fixtures/table-only.json", "fixtures/link-bound.json"]


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("path", SMALL + ["single-region-24-llama2-70b.json"])
def test_baselines_are_valid(path: str, method: str) -> None:
    topo = load_topology(ROOT / path)
    cm = CostModel(topo)
    placement = plan(topo, method=method, cost_model=cm)
    validate_placement(placement, topo, cm)
    assert placement.method == method and placement.status == "baseline"
    assert placement.objective_tokens_per_s > 0


def test_swarm_uses_equal_stages_of_the_smallest_max_layers() -> None:
    topo = load_topology(ROOT / "single-region-24-llama2-70b.json")
    ranges = swarm_ranges(topo, CostModel(topo))
    assert sorted({e - s for s, e in ranges.values()}) == [4]  # T4 holds 4 layers: 20 stages
    assert {s for s, _ in ranges.values()} == set(range(0, 80, 4))


def test_petals_takes_max_layers_everywhere() -> None:
    topo = load_topology(ROOT / "single-region-24-llama2-70b.json")
    cm = CostModel(topo)
    placement = baseline_placement(topo, cm, "petals")
    for node, (s, e) in placement.ranges.items():
        assert e - s == cm.max_layers(topo.node(node).gpu)


def test_sp_pipelines_are_served_independently() -> None:
    topo = load_topology(ROOT / "fixtures" / "two-pipelines.json")
    cm = CostModel(topo)
    pipelines = sp_pipelines(topo, cm)
    assert sorted(sorted(n for n, _, _ in p) for p in pipelines) == [["f-0", "f-1"], ["s-0", "s-1"]]
    placement = baseline_placement(topo, cm, "sp")
    assert placement.objective_tokens_per_s == pytest.approx(140.0)
    pairs = {(f.src, f.dst) for f in placement.flows if "coordinator" not in (f.src, f.dst)}
    assert pairs == {("f-0", "f-1"), ("s-0", "s-1")}


def _layers(pipeline) -> dict[str, int]:
    return {node: end - start for node, start, end in pipeline}


def test_sp_is_one_pipeline_per_gpu_type_of_all_its_nodes() -> None:
    topo = load_topology(ROOT / "single-region-24-llama2-70b.json")
    cm = CostModel(topo)
    pipelines = sp_pipelines(topo, cm)
    # the paper prototype's layout: A100 4 x 20, L4 8 x 10, T4 12 x 6-7 (beyond the planner's cap)
    assert [sorted(_layers(p).values()) for p in pipelines] == [[20] * 4, [10] * 8, [6] * 4 + [7] * 8]
    for stages in pipelines:
        assert len({topo.node(n).gpu for n, _, _ in stages}) == 1
        assert [s for _, s, _ in stages] == [0] + [e for _, _, e in stages[:-1]] and stages[-1][2] == 80
    placement = baseline_placement(topo, cm, "sp")
    validate_placement(placement, topo, cm)
    assert len(placement.ranges) == 24


def test_sp_pools_the_types_that_cannot_hold_the_model_alone() -> None:
    topo = load_topology(ROOT / "geo-42-llama2-70b.json")
    cm = CostModel(topo)
    pipelines = sp_pipelines(topo, cm)
    types = [sorted({topo.node(n).gpu for n, _, _ in p}) for p in pipelines]
    # 6 V100 (7 layers each at most) and 10 T4 (7 each) hold 42 and 70 of 80 layers: pooled
    assert ["T4", "V100"] in types and len(pipelines) == 6
    pooled = pipelines[types.index(["T4", "V100"])]
    assert sorted(_layers(pooled).values()) == [5] * 16
    assert sum(len(p) for p in pipelines) == 42


def test_sp_crosses_each_region_boundary_once() -> None:
    topo = load_topology(ROOT / "three-region-24-llama2-70b.json")
    cm = CostModel(topo)
    for stages in sp_pipelines(topo, cm):
        regions = [topo.node(n).region for n, _, _ in stages]
        crossings = sum(a != b for a, b in zip(regions, regions[1:]))
        assert crossings == len(set(regions)) - 1


def test_planner_and_explain_take_placements_past_the_planner_cap() -> None:
    topo = load_topology(ROOT / "single-region-24-llama2-70b.json")
    cm = CostModel(topo)
    sp = baseline_placement(topo, cm, "sp")
    result = explain(topo, sp, cm)
    for node, (s, e) in sp.ranges.items():  # per-layer capacity counts each node at its own k
        assert cm.capacity_tokens_per_s(topo.node(node).gpu, e - s) > 0
    a100_layers = result.layer_capacity_tokens_per_s[0]
    expected = sum(cm.node_capacity_tokens_per_s(n, e - s) for n, (s, e) in sp.ranges.items() if s == 0)
    assert a100_layers == pytest.approx(expected)
    helix = plan(topo, time_limit_s=5, cost_model=cm)  # sp is a final candidate, never a MILP start
    assert "sp" in helix.extra["candidates"] and helix.extra["source"] != "sp"
    assert helix.objective_tokens_per_s > helix.extra["candidates"]["sp"]


def test_a_cluster_that_only_fits_past_the_cap_names_the_way_out() -> None:
    four = topology_from_dict({"model": "llama-2-70b", "nodes": [{"name": "t", "gpu": "T4x4", "count": 4}]})
    with pytest.raises(InfeasibleError, match=r"at most 64 of the 80 layers .*\(--method sp\) would fit 120"):
        plan(four)
    sp = plan(four, method="sp")
    assert sorted(e - s for s, e in sp.ranges.values()) == [20, 20, 20, 20]
    assert sp.objective_tokens_per_s > 0
    one = topology_from_dict({"model": "llama-2-70b", "nodes": [{"name": "t", "gpu": "T4x4", "count": 1}]})
    with pytest.raises(
        InfeasibleError,
        match=r"at most 30 of the 80 layers .* with memory filled with weights: "
        r"1 x T4x4 \(max 30 layers each\); add nodes or use a smaller model$",
    ):
        plan(one, method="sp")


def test_helix_is_never_below_the_baselines_on_the_paper_cluster() -> None:
    topo = load_topology(ROOT / "single-region-24-llama2-70b.json")
    cm = CostModel(topo)
    helix = plan(topo, time_limit_s=8, cost_model=cm)
    validate_placement(helix, topo, cm)
    best = max(baseline_placement(topo, cm, m).objective_tokens_per_s for m in BASELINES)
    assert helix.objective_tokens_per_s >= best
    assert helix.upper_bound_tokens_per_s >= helix.objective_tokens_per_s
    swarm = baseline_placement(topo, cm, "swarm").objective_tokens_per_s
    assert helix.objective_tokens_per_s >= 2 * swarm


def test_explain_names_the_saturated_elements() -> None:
    topo = load_topology(ROOT / "fixtures" / "link-bound.json")
    cm = CostModel(topo, WorkloadShape(0, 100))  # decode traffic only: the link carries 50 tokens/s
    placement = plan(topo, time_limit_s=5, cost_model=cm)
    result = explain(topo, placement, cm, boost=0.1)
    assert result.throughput_tokens_per_s == pytest.approx(50.0)
    link = [c for c in result.cut if c.kind == "link"]
    assert len(link) == 1 and link[0].gain_tokens_per_s == pytest.approx(5.0)
    assert result.gain_all_cut_tokens_per_s == pytest.approx(5.0)
    assert max_flow(topo, cm, placement.ranges).value_tokens_per_s == pytest.approx(50.0)
    for bad in (-2.0, 0.0, float("nan")):
        with pytest.raises(ConfigError, match=f"boost must be a positive number .* got {bad}"):
            explain(topo, placement, cm, boost=bad)


def test_infeasible_and_bad_options_are_named() -> None:
    too_small = topology_from_dict({"model": "llama-2-70b", "nodes": [{"name": "t", "gpu": "T4", "count": 3}]})
    with pytest.raises(InfeasibleError, match="at most 12 of the 80 layers"):
        plan(too_small)
    cannot_hold = topology_from_dict(
        {
            "model": "llama-2-70b",
            "gpu_types": {"Tiny": {"memory_gb": 2, "memory_bandwidth": "100 GB/s", "tflops": 10}},
            "nodes": [{"name": "t", "gpu": "Tiny", "count": 100}],
        }
    )
    with pytest.raises(InfeasibleError, match="cannot hold one layer|no GPU"):
        plan(cannot_hold)
    topo = load_topology(ROOT / "fixtures" / "two-pipelines.json")
    with pytest.raises(ConfigError, match="unknown placement method"):
        plan(topo, method="magic")
    with pytest.raises(ConfigError, match="time limit"):
        plan(topo, time_limit_s=0)
    with pytest.raises(ConfigError, match="region windows need partial inference"):
        plan(topo, partial_inference=False, region_windows=True)
