"""validate_placement: one clear PlacementError per kind of defect."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import PlacementError
from helix_jax.placement import FlowEdge, Placement
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import load_topology

FIXTURES = Path(__file__).resolve().parents[1] / "topologies" / "fixtures"
DECODE_ONLY = WorkloadShape(0, 100)  # no prompt traffic: a link's tokens/s = bandwidth / vector bytes


def _two_pipelines() -> tuple[Placement, object]:
    topo = load_topology(FIXTURES / "two-pipelines.json")
    flows = (
        FlowEdge("coordinator", "f-0", 100),
        FlowEdge("f-0", "f-1", 100),
        FlowEdge("f-1", "coordinator", 100),
        FlowEdge("coordinator", "s-0", 40),
        FlowEdge("s-0", "s-1", 40),
        FlowEdge("s-1", "coordinator", 40),
    )
    placement = Placement(
        "two-pipelines", 4, {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)}, flows, objective_tokens_per_s=140.0
    )
    return placement, topo


def test_a_correct_placement_passes() -> None:
    placement, topo = _two_pipelines()
    validate_placement(placement, topo)


def _with(placement: Placement, **changes) -> Placement:
    return dataclasses.replace(placement, **changes)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: _with(p, num_layers=5), "has 4"),
        (lambda p: _with(p, ranges={**p.ranges, "ghost": (0, 1)}), "does not have"),
        (lambda p: _with(p, ranges={**p.ranges, "f-0": (0, 3), "f-1": (3, 4)}), "at most 2"),
        (lambda p: _with(p, ranges={**p.ranges, "f-0": (2, 2)}), "non-empty"),
        (lambda p: _with(p, ranges={"f-0": (0, 2), "s-0": (0, 2)}, flows=()), r"layer\(s\) \[2, 3\]"),
        (lambda p: _with(p, flows=p.flows[:1] + (FlowEdge("f-0", "s-0", 100),) + p.flows[2:]), "hand-off"),
        (lambda p: _with(p, flows=p.flows[:2] + (FlowEdge("f-1", "coordinator", 90),) + p.flows[3:]), "not conserved"),
        (
            lambda p: _with(p, flows=tuple(FlowEdge(e.src, e.dst, e.tokens_per_s * 2) for e in p.flows), objective_tokens_per_s=280.0),
            "over its capacity",
        ),
        (lambda p: _with(p, objective_tokens_per_s=150.0), "objective"),
        (lambda p: _with(p, flows=p.flows + (FlowEdge("s-1", "coordinator", 0),)), "twice"),
        (lambda p: _with(p, flows=(FlowEdge("coordinator", "f-0", -1),)), "negative"),
    ],
)
def test_each_defect_is_named(mutate, message: str) -> None:
    placement, topo = _two_pipelines()
    with pytest.raises(PlacementError, match=message):
        validate_placement(mutate(placement), topo)


def test_link_capacity_is_checked() -> None:
    topo = load_topology(FIXTURES / "link-bound.json")
    flows = (FlowEdge("coordinator", "a", 60), FlowEdge("a", "b", 60), FlowEdge("b", "coordinator", 60))
    placement = Placement("link-bound", 4, {"a": (0, 2), "b": (2, 4)}, flows, objective_tokens_per_s=60)
    cm = CostModel(topo, DECODE_ONLY)
    with pytest.raises(PlacementError, match="over a link of 50.000"):
        validate_placement(placement, topo, cm)
    ok = dataclasses.replace(placement, flows=tuple(FlowEdge(e.src, e.dst, 50) for e in flows), objective_tokens_per_s=50)
    validate_placement(ok, topo, cm)
    with pytest.raises(PlacementError, match="over a link of 11.6"):  # prompt vectors count too
        validate_placement(ok, topo)


def test_nic_capacity_is_checked(nic_pair) -> None:
    # tiny model: 256 activation bytes per token; b's 2560 B/s NIC passes 10 tokens/s each way
    topo = nic_pair
    flows = (FlowEdge("coordinator", "a", 12), FlowEdge("a", "b", 12), FlowEdge("b", "coordinator", 12))
    placement = Placement(topo.name, 4, {"a": (0, 2), "b": (2, 4)}, flows, objective_tokens_per_s=12)
    cm = CostModel(topo, DECODE_ONLY)
    with pytest.raises(PlacementError, match="node 'b' moves 12.000 tokens/s through a NIC of 10.000"):
        validate_placement(placement, topo, cm)
    validate_placement(
        dataclasses.replace(placement, flows=tuple(FlowEdge(e.src, e.dst, 10) for e in flows), objective_tokens_per_s=10), topo, cm
    )
    # token ids to and from the coordinator bypass the NIC
    alone = Placement(
        topo.name, 4, {"b": (0, 4)}, (FlowEdge("coordinator", "b", 90), FlowEdge("b", "coordinator", 90)), objective_tokens_per_s=90
    )
    validate_placement(alone, topo)


def test_flows_must_end_at_placed_nodes() -> None:
    placement, topo = _two_pipelines()
    stray = _with(
        placement,
        ranges={k: v for k, v in placement.ranges.items() if not k.startswith("s-")},
        flows=placement.flows,
        objective_tokens_per_s=140.0,
    )
    with pytest.raises(PlacementError, match="'s-0' holds no layers in this placement"):
        validate_placement(stray, topo)


def test_a_node_may_hold_what_fits_in_its_memory_and_no_more() -> None:
    topo = load_topology(FIXTURES.parent / "single-region-24-llama2-70b.json")
    cm = CostModel(topo)
    assert (cm.max_layers("A100-40GB"), cm.memory_max_layers("A100-40GB")) == (11, 20)
    a100s = [n.name for n in topo.nodes if n.gpu == "A100-40GB"]

    def pipeline(per_node: int) -> Placement:
        ranges = {name: (i * per_node, min(80, (i + 1) * per_node)) for i, name in enumerate(a100s)}
        return Placement("a100s", 80, ranges, (), objective_tokens_per_s=0.0)

    validate_placement(pipeline(20), topo, cm)  # over the planner's cap, inside memory
    with pytest.raises(PlacementError, match=r"holds 21 layers; at most 20 fit in its memory"):
        validate_placement(pipeline(21), topo, cm)
