"""Simulated throughput against hand-computed limits: parallel pipelines and a slow link."""

from __future__ import annotations

from pathlib import Path

import pytest

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.placement import FlowEdge, Placement
from helix_jax.sim import SimConfig, simulate
from helix_jax.topology import load_topology
from helix_jax.workload import FixedLengths

C = "coordinator"
FIXTURES = Path(__file__).resolve().parents[1] / "topologies" / "fixtures"


def fixture_path(name: str) -> Path:
    return FIXTURES / name


def two_pipelines() -> Placement:
    flows = [(C, "f-0", 100), ("f-0", "f-1", 100), ("f-1", C, 100), (C, "s-0", 40), ("s-0", "s-1", 40), ("s-1", C, 40)]
    return Placement(
        "two-pipelines",
        4,
        {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)},
        tuple(FlowEdge(*f) for f in flows),
        objective_tokens_per_s=140.0,
    )


def test_two_pipelines_reach_most_of_the_max_flow_in_proportion() -> None:
    """Max-flow 140 tok/s (100 + 40). The simulation stays below it and reaches at least 60%:
    the capacities assume every resident sequence sits in a full decode batch, while a 2-stage
    pipeline always has one micro-batch waiting and KV is reserved for the full output (the
    measured share is about 70%; see README, section bench)."""
    topo = load_topology(fixture_path("two-pipelines.json"))
    cost = CostModel(topo, WorkloadShape(100, 50))
    res = simulate(two_pipelines(), cost, FixedLengths(100, 50), SimConfig(duration_s=2000, warmup_s=500, seed=1))
    assert 0.6 <= res.flow_fraction <= 1.02
    per_node = {n.name: n.mean_decode_batch * n.steps for n in res.nodes}
    fast_share = per_node["f-1"] / (per_node["f-1"] + per_node["s-1"])
    assert fast_share == pytest.approx(100 / 140, abs=0.08)
    assert res.rejected_overloaded == 0 and res.rejected_too_large == 0


def test_link_bound_cluster_is_limited_by_its_link() -> None:
    """a [0,2) -> b [2,4) over 12,800 B/s; tiny activations are 64 x 4 B = 256 B/token, so the
    link carries 50 vectors/s. Each request sends 10 prompt tokens once and 39 decode tokens
    over it (the 40th output token is never fed back): decode throughput <= 50 x 40 / 49.
    The cost model prices the link at 50 / (1 + 10/40) = 40 decode tokens/s (prompts included)."""
    topo = load_topology(fixture_path("link-bound.json"))
    cost = CostModel(topo, WorkloadShape(10, 40))
    assert cost.link_tokens_per_s("a", "b") == pytest.approx(40.0)
    placement = Placement(
        "link-bound",
        4,
        {"a": (0, 2), "b": (2, 4)},
        (FlowEdge(C, "a", 40), FlowEdge("a", "b", 40), FlowEdge("b", C, 40)),
        objective_tokens_per_s=40.0,
    )
    res = simulate(placement, cost, FixedLengths(10, 40), SimConfig(duration_s=600, warmup_s=100))
    link_limit = 50 * 40 / 49
    assert res.metrics.decode_tokens_per_s == pytest.approx(link_limit, rel=0.05)
    assert res.metrics.decode_tokens_per_s == pytest.approx(placement.objective_tokens_per_s, rel=0.05)
    assert all(n.busy_fraction < 0.5 for n in res.nodes)  # compute (1000 tok/s) is not the limit


def test_decode_micro_batches_beat_one_convoy() -> None:
    """A 24-hop chain over the 24-GPU LLaMA-2-70B cluster (each node holds its layers once). If
    every resident may join one step, the residents clump into a convoy that keeps one stage busy
    at a time; the cost model's cap (PIPELINE_MICROBATCH_FACTOR own-pace batches per step) splits
    them into micro-batches that pipeline, which the simulator must show as clearly more
    throughput."""
    from helix_jax.solver.maxflow import placement_with_flows
    from helix_jax.workload import AzureConversationLengths

    topo = load_topology(Path(__file__).resolve().parents[1] / "topologies" / "single-region-24-llama2-70b.json")

    class OneConvoy(CostModel):
        def max_decode_batch(self, gpu_type: str, num_layers_held: int) -> int:
            return max(1, int(self.resident_requests(gpu_type, num_layers_held)))

    capped = CostModel(topo)
    held = {"A100-40GB": 8, "L4": 3, "T4": 2}  # 4 x 8 + 8 x 3 + 12 x 2 = 80 layers
    ranges, layer = {}, 0
    for node in topo.nodes:
        ranges[node.name] = (layer, layer + held[node.gpu])
        layer += held[node.gpu]
    assert layer == topo.model.num_layers
    placement = placement_with_flows(topo, capped, ranges, "chain")
    assert placement.extra["mean_hops"] == 24
    config = SimConfig(duration_s=400, warmup_s=200)
    micro = simulate(placement, capped, AzureConversationLengths(), config)
    convoy = simulate(placement, OneConvoy(topo), AzureConversationLengths(), config)
    for node in micro.nodes:  # no step ran more decode rows than the node's cap
        assert node.max_decode_seqs <= capped.max_decode_batch(topo.node(node.name).gpu, node.layers[1] - node.layers[0])
    assert max(n.max_decode_seqs for n in convoy.nodes) > max(n.max_decode_seqs for n in micro.nodes)
    assert micro.metrics.decode_tokens_per_s > 1.2 * convoy.metrics.decode_tokens_per_s
