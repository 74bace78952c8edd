"""Max-flow of given placements, checked by hand on tiny graphs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import ConfigError, PlacementError
from helix_jax.placement import FlowEdge
from helix_jax.solver.maxflow import max_flow, placement_with_flows
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import COORDINATOR, load_topology, topology_from_dict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "topologies" / "fixtures"
DECODE_ONLY = WorkloadShape(0, 100)  # no prompt traffic: a link's tokens/s = bandwidth / vector bytes


def _load(name: str):
    topo = load_topology(FIXTURES / f"{name}.json")
    return topo, CostModel(topo)


def test_two_pipelines_add_up_and_may_cross() -> None:
    topo, cm = _load("two-pipelines")
    ranges = {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)}
    result = max_flow(topo, cm, ranges)
    assert result.value_tokens_per_s == pytest.approx(140.0)
    assert result.node_flows == pytest.approx({"f-0": 100, "f-1": 100, "s-0": 40, "s-1": 40})
    # only the fast pipeline: 100; fast first half feeding the slow second half: 40
    assert max_flow(topo, cm, {"f-0": (0, 2), "f-1": (2, 4)}).value_tokens_per_s == pytest.approx(100.0)
    assert max_flow(topo, cm, {"f-0": (0, 2), "s-1": (2, 4)}).value_tokens_per_s == pytest.approx(40.0)


def test_partial_inference_lets_overlapping_ranges_hand_off() -> None:
    topo, cm = _load("two-pipelines")
    chain = {"f-0": (0, 2), "f-1": (1, 3), "s-0": (3, 4)}  # f-0 ends at 2, inside f-1's [1, 3)
    assert max_flow(topo, cm, chain, partial_inference=True).value_tokens_per_s == pytest.approx(40.0)
    assert max_flow(topo, cm, chain, partial_inference=False).value_tokens_per_s == 0.0
    both = {"f-0": (0, 2), "f-1": (1, 3), "s-0": (2, 4)}
    exact = max_flow(topo, cm, both, partial_inference=False)
    assert exact.value_tokens_per_s == pytest.approx(40.0)
    assert ("f-0", "s-0") in exact.edge_flows and ("f-0", "f-1") not in exact.edge_flows
    # f-1 as a second hop needs partial inference: f-0 [0,2) -> f-1 runs [2,3) -> s-0 runs [3,4)
    fed = max_flow(topo, cm, both, partial_inference=True, allowed_edges={("f-0", "f-1"), ("f-1", "s-0")})
    assert fed.value_tokens_per_s == pytest.approx(40.0)
    assert fed.edge_flows[("f-0", "f-1")] == pytest.approx(40.0)


def test_link_limits_count() -> None:
    topo, _ = _load("link-bound")
    cm = CostModel(topo, DECODE_ONLY)
    result = max_flow(topo, cm, {"a": (0, 2), "b": (2, 4)})
    assert result.value_tokens_per_s == pytest.approx(50.0)
    assert result.edge_flows == pytest.approx({("coordinator", "a"): 50, ("a", "b"): 50, ("b", "coordinator"): 50})
    # with the Azure workload every decode token also sends 763/232 prompt vectors over the link
    azure = max_flow(topo, CostModel(topo), {"a": (0, 2), "b": (2, 4)})
    assert azure.value_tokens_per_s == pytest.approx(50.0 / (1 + 763 / 232))


def test_nic_limits_node_to_node_traffic(nic_pair) -> None:
    # tiny model: 256 activation bytes per token; a 2560 B/s NIC passes 10 tokens/s
    topo = nic_pair
    cm = CostModel(topo, DECODE_ONLY)
    assert cm.nic_tokens_per_s("b") == pytest.approx(10.0) and cm.nic_tokens_per_s("a") is None
    assert CostModel(topo, WorkloadShape(300, 100)).nic_tokens_per_s("b") == pytest.approx(2.5)  # + 3 prompt vectors
    assert max_flow(topo, cm, {"a": (0, 2), "b": (2, 4)}).value_tokens_per_s == pytest.approx(10.0)
    assert max_flow(topo, cm, {"b": (0, 2), "a": (2, 4)}).value_tokens_per_s == pytest.approx(10.0)
    # coordinator traffic (token ids) bypasses the NIC: b alone holding everything is not limited
    assert max_flow(topo, cm, {"b": (0, 4)}).value_tokens_per_s == pytest.approx(100.0)


def test_placement_with_flows_is_valid_and_serialisable(tmp_path) -> None:
    topo, cm = _load("two-pipelines")
    ranges = {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)}
    placement = placement_with_flows(topo, cm, ranges, "test", status="heuristic", upper_bound_tokens_per_s=150)
    assert placement.objective_tokens_per_s == pytest.approx(140.0)
    validate_placement(placement, topo, cm)
    path = tmp_path / "p.json"
    placement.save(path)
    from helix_jax.placement import Placement

    assert Placement.load(path).objective_tokens_per_s == pytest.approx(140.0)
    with pytest.raises(PlacementError, match="at least one node"):
        placement_with_flows(topo, cm, {}, "test")


def test_restricted_edges_keep_pipelines_apart() -> None:
    topo, cm = _load("two-pipelines")
    ranges = {"f-0": (0, 2), "s-1": (2, 4), "s-0": (0, 2), "f-1": (2, 4)}
    # pipelines f-0 -> s-1 and s-0 -> f-1: each limited by its slow node
    assert max_flow(topo, cm, ranges, allowed_edges={("f-0", "s-1"), ("s-0", "f-1")}).value_tokens_per_s == pytest.approx(80.0)
    assert max_flow(topo, cm, ranges).value_tokens_per_s == pytest.approx(140.0)


def test_balanced_flow_shares_parallel_nodes() -> None:
    """a and b both hold [0, 2) and feed c, which caps the flow at 100: any split of 100 over a and
    b is a maximum flow; the placement's flows split it evenly (the scheduler follows them, and
    a node carrying all of it would also hold all of its KV)."""
    topo = topology_from_dict(
        {
            "model": {"preset": "tiny", "num_layers": 4},
            "gpu_types": {"g": {"max_layers": 2, "capacity_tokens_per_s": [100, 100]}},
            "nodes": [{"name": "a", "gpu": "g"}, {"name": "b", "gpu": "g"}, {"name": "c", "gpu": "g"}],
        }
    )
    cm = CostModel(topo)
    ranges = {"a": (0, 2), "b": (0, 2), "c": (2, 4)}
    assert max_flow(topo, cm, ranges).value_tokens_per_s == pytest.approx(100.0)
    spread = max_flow(topo, cm, ranges, balance=True)
    assert spread.value_tokens_per_s == pytest.approx(100.0)
    assert spread.node_flows == pytest.approx({"a": 50.0, "b": 50.0, "c": 100.0}, rel=1e-4)
    placement = placement_with_flows(topo, cm, ranges, "test")
    validate_placement(placement, topo, cm)
    assert {(f.src, f.dst): f.tokens_per_s for f in placement.flows} == pytest.approx(
        {("coordinator", "a"): 50, ("coordinator", "b"): 50, ("a", "c"): 50, ("b", "c"): 50, ("c", "coordinator"): 100}, rel=1e-4
    )


def test_survivor_flows_replan_around_lost_nodes() -> None:
    from helix_jax.runtime.coordinator import pruned_flows
    from helix_jax.solver.maxflow import survivor_flows

    topo, cm = _load("two-pipelines")
    ranges = {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)}
    full = placement_with_flows(topo, cm, ranges, "helix")
    assert full.objective_tokens_per_s == pytest.approx(140.0)
    # f-1 lost: both first halves can only hand off to s-1 (40 tok/s); ranges are kept whole
    after = survivor_flows(topo, full, {"f-1"})
    assert after.ranges == full.ranges and after.objective_tokens_per_s == pytest.approx(40.0)
    assert all("f-1" not in (f.src, f.dst) for f in after.flows)
    assert survivor_flows(topo, full, set()).objective_tokens_per_s == pytest.approx(140.0)
    # separate pipelines stay separate: losing s-1 leaves the f pipeline alone, never s-0 -> f-1
    sp = dataclasses.replace(
        full, method="sp", flows=tuple(f for f in full.flows if {f.src, f.dst} not in ({"f-0", "s-1"}, {"s-0", "f-1"}))
    )
    after_sp = survivor_flows(topo, sp, {"s-1"})
    assert after_sp.objective_tokens_per_s == pytest.approx(100.0)
    assert all(f.src != "s-0" for f in after_sp.flows)
    # the solver-free fallback only drops the edges that touch the lost node
    pruned = pruned_flows(full, frozenset({"f-1"}))
    assert all("f-1" not in (f.src, f.dst) for f in pruned.flows)
    assert {(f.src, f.dst) for f in pruned.flows} <= {(f.src, f.dst) for f in full.flows}


def test_a_saved_placement_is_served_with_recomputed_flows_and_sp_stays_separate(tmp_path) -> None:
    """deploy --placement FILE recomputes the flows for this topology; separate pipelines keep
    only their own hand-offs (on the 24-GPU cluster the open max-flow would hand A100 stages on
    to L4s and back, mixing the A100, L4 and T4 pipelines)."""
    from helix_jax.cli.serve_cmds import placement_for
    from helix_jax.solver.baselines import baseline_placement

    topo = load_topology(ROOT / "topologies" / "single-region-24-llama2-70b.json")
    cm = CostModel(topo)
    sp = baseline_placement(topo, cm, "sp")
    sp.save(tmp_path / "sp.json")
    served = placement_for(topo, tmp_path / "sp.json", 10)
    edges = {(f.src, f.dst) for f in sp.flows}
    assert served.method == "sp" and served.ranges == sp.ranges
    assert {(f.src, f.dst) for f in served.flows} == edges
    assert served.objective_tokens_per_s == pytest.approx(sp.objective_tokens_per_s, rel=1e-6)
    open_flow = placement_with_flows(topo, cm, dict(sp.ranges), "helix", allowed_edges=None)
    assert {(f.src, f.dst) for f in open_flow.flows} - edges  # what the rule prevents
    # a helix file is re-flowed over every edge, and a file of another model is refused
    two, cm2 = _load("two-pipelines")
    ranges = {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)}
    one_edge = dataclasses.replace(
        placement_with_flows(two, cm2, ranges, "helix"),
        flows=(FlowEdge(COORDINATOR, "f-0", 1.0), FlowEdge("f-0", "f-1", 1.0), FlowEdge("f-1", COORDINATOR, 1.0)),
    )
    one_edge.save(tmp_path / "helix.json")
    assert placement_for(two, tmp_path / "helix.json", 10).objective_tokens_per_s == pytest.approx(140.0)
    with pytest.raises(ConfigError, match="covers 4 layers, the topology's model has 80"):
        placement_for(topo, tmp_path / "helix.json", 10)


def test_a_placement_is_planned_served_and_replanned_for_its_own_workload(tmp_path) -> None:
    """`plan --trace/--prompt-tokens` prices capacities for that workload and records its shape in
    the file; deploy (placement_for), failure re-plans (survivor_flows) and explain read it back,
    so the flows they recompute are the planned ones, not the default chat workload's."""
    from typer.testing import CliRunner

    from helix_jax.cli.main import app
    from helix_jax.cli.serve_cmds import placement_for
    from helix_jax.placement import Placement
    from helix_jax.solver.maxflow import survivor_flows

    path = ROOT / "topologies" / "single-region-24-llama2-70b.json"
    out = tmp_path / "p.json"
    result = CliRunner().invoke(
        app,
        ["plan", str(path), "--prompt-tokens", "2000", "--output-tokens", "20", "--time-limit", "8", "--out", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "fixed workload: mean prompt 2000 tokens, mean output 20.0 tokens" in result.output
    saved = Placement.load(out)
    assert saved.workload.to_dict() == {"mean_prompt_tokens": 2000.0, "mean_output_tokens": 20.0, "output_length_second_moment_ratio": 1.0}
    topo = load_topology(path)
    chat = placement_with_flows(topo, CostModel(topo), dict(saved.ranges), "helix")
    assert chat.objective_tokens_per_s > 3 * saved.objective_tokens_per_s  # 100 prompt tokens per output
    served = placement_for(topo, out, 10)
    assert served.objective_tokens_per_s == pytest.approx(saved.objective_tokens_per_s, rel=1e-6)
    assert survivor_flows(topo, saved, ()).objective_tokens_per_s == pytest.approx(saved.objective_tokens_per_s, rel=1e-6)
    why = CliRunner().invoke(app, ["explain", str(out), "--topology", str(path), "--json"])
    assert why.exit_code == 0, why.output
    assert json.loads(why.output)["throughput_tokens_per_s"] == pytest.approx(saved.objective_tokens_per_s, rel=1e-6)
