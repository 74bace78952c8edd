"""The per-step engine: hand-counted events, and results equal to the message-per-event reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from helix_jax.costmodel import CostModel
from helix_jax.placement import FlowEdge, Placement
from helix_jax.sim import SimConfig
from helix_jax.sim.engine import Simulator
from helix_jax.sim.reference import ReferenceSimulator
from helix_jax.topology import load_topology, topology_from_dict
from helix_jax.workload import AzureConversationLengths, FixedLengths

C = "coordinator"
ROOT = Path(__file__).resolve().parents[1]
BANDWIDTH_BYTES_PER_S = 1e6
LATENCY_MS = 2.0


def table_topology(num_layers: int, nodes: list[str], capacity: list[float]):
    return topology_from_dict(
        {
            "name": "t",
            "model": {"preset": "tiny", "num_layers": num_layers},
            "gpu_types": {"g": {"max_layers": len(capacity), "capacity_tokens_per_s": capacity}},
            "nodes": [{"name": n, "gpu": "g"} for n in nodes],
            "links": {"default": {"bandwidth": BANDWIDTH_BYTES_PER_S, "latency_ms": LATENCY_MS}},
        }
    )


def chain_placement(cost: CostModel, hops: int, kv_tokens: int) -> Placement:
    """n0 [0,1) -> n1 [1,2) -> ...; each node's KV budget holds exactly `kv_tokens` tokens."""
    names = [f"n{i}" for i in range(hops)]
    edges = [FlowEdge(a, b, 10.0) for a, b in zip([C, *names], [*names, C])]
    share = {n: (kv_tokens + 0.5) / cost.kv_budget_token_layers("g", 1) for n in names}
    return Placement("t", hops, {n: (i, i + 1) for i, n in enumerate(names)}, tuple(edges), extra={"kv_fraction": share})


def lockstep_generation_s(cost: CostModel, hops: int, batch: int, prompt: int, output: int) -> float:
    """One generation of `batch` requests moving as one batch: a prefill round, then `output - 1`
    decode rounds, each coordinator -> n0 -> ... -> coordinator (every link idle when used)."""
    names = [f"n{i}" for i in range(hops)]
    total = 0.0
    for round_ in range(output):
        tokens = batch * prompt if round_ == 0 else batch
        for src, dst in zip([C, *names], names):
            total += cost.transfer_seconds(src, dst, tokens)
            total += (
                cost.layer_step_seconds("g", tokens, 0, 0)
                if round_ == 0
                else cost.layer_step_seconds("g", 0, batch, batch * (prompt + round_))
            )
        total += cost.transfer_seconds(names[-1], C, batch)
    return total


@pytest.mark.parametrize("batch", [1, 4])
def test_events_grow_with_steps_not_with_the_requests_in_them(batch: int) -> None:
    """`batch` requests cross a 3-hop chain together (KV holds exactly `batch`), for 2 generations
    of 3 output tokens: every round is a wake-up and a step end per hop plus one coordinator
    message, 2 x 3 x (2 x 3 + 1) = 42 events for 1 request in flight or 4, while the request-hops
    grow 4x."""
    hops, prompt, output, generations = 3, 10, 3, 2
    cost = CostModel(table_topology(hops, [f"n{i}" for i in range(hops)], [100.0]))
    assert cost.max_decode_batch("g", 1) >= batch
    placement = chain_placement(cost, hops, batch * (prompt + output))
    duration_s = generations * lockstep_generation_s(cost, hops, batch, prompt, output) + 1e-6
    sim = Simulator(placement, cost, FixedLengths(prompt, output), SimConfig(duration_s=duration_s, warmup_s=0.0))
    res = sim.run()
    assert res.completed == generations * batch
    assert sum(n.steps for n in res.nodes) == generations * output * hops
    assert sum(n.decode_seqs_total for n in sim.nodes.values()) == generations * (output - 1) * hops * batch
    assert res.events == generations * output * (2 * hops + 1) == 42
    assert res.events_by_kind == {"step_done": 18, "wake": 18, "at_coordinator": 6, "arrival": 0, "at_node": 0}


def test_messages_to_a_busy_node_are_not_events() -> None:
    """Four requests arrive 0.1 ms apart; their prompts queue on the coordinator's link and land
    while the node runs the first prompt's step (~0.29 s). Stopped 1 ms after that step: the fast
    engine processed 4 arrivals, 1 wake-up and 1 step end; the reference also had one event per
    prompt landing (4), the three on the busy node included."""
    cost = CostModel(table_topology(4, ["n"], [400.0, 380.0, 360.0, 340.0]))
    prompt = 100
    placement = Placement("t", 4, {"n": (0, 4)}, (FlowEdge(C, "n", 340), FlowEdge("n", C, 340)))
    landed_s = [cost.transfer_seconds(C, "n", prompt) + i * (cost.transfer_seconds(C, "n", prompt) - LATENCY_MS / 1e3) for i in range(4)]
    step_end_s = landed_s[0] + 4 * cost.layer_step_seconds("g", prompt, 0, 0)
    assert landed_s[-1] < step_end_s  # the last three prompts land while the node is busy
    config = SimConfig(mode="online", duration_s=step_end_s + 1e-3, warmup_s=0.0, arrival_times_s=(0.0, 1e-4, 2e-4, 3e-4))
    fast = Simulator(placement, cost, FixedLengths(prompt, 4), config).run()
    reference = ReferenceSimulator(placement, cost, FixedLengths(prompt, 4), config).run()
    assert fast.events_by_kind == {"step_done": 1, "wake": 1, "at_coordinator": 0, "arrival": 4, "at_node": 0}
    assert reference.events_by_kind == {"step_done": 1, "wake": 0, "at_coordinator": 0, "arrival": 4, "at_node": 4}
    assert fast.nodes == reference.nodes and fast.nodes[0].steps == 2  # the other three prompts' step began


def mesh() -> tuple[CostModel, Placement]:
    """Partial inference: c [1,4) gets requests at layer 2 (from a [0,2)) and at layer 3 (from
    b [0,3)), so its steps mix entry layers. With Azure-like lengths, steps also split decode
    messages at the batch cap and leave the last prompt of a step part-prefilled."""
    cost = CostModel(table_topology(4, ["a", "b", "c", "d"], [60.0, 50.0, 40.0]))
    flows = [(C, "a", 30), (C, "b", 20), ("a", "c", 20), ("a", "d", 10), ("b", "c", 20), ("c", C, 40), ("d", C, 10)]
    ranges = {"a": (0, 2), "b": (0, 3), "c": (1, 4), "d": (2, 4)}
    return cost, Placement("t", 4, ranges, tuple(FlowEdge(*f) for f in flows))


def same_results(config: SimConfig, cost: CostModel, placement: Placement, lengths) -> tuple:
    fast = Simulator(placement, cost, lengths, config).run()
    reference = ReferenceSimulator(placement, cost, lengths, config).run()
    for name in (
        "metrics",
        "nodes",
        "submitted",
        "admitted",
        "completed",
        "rejected_overloaded",
        "queued_at_end",
        "in_flight_at_end",
        "peak_in_flight",
        "mean_in_flight",
    ):
        assert getattr(fast, name) == getattr(reference, name), name
    assert fast.events_by_kind["step_done"] == reference.events_by_kind["step_done"]
    return fast, reference


@pytest.mark.parametrize("policy", ["iwrr", "random", "shortest-queue", "swarm"])
@pytest.mark.parametrize("mode", ["offline", "online"])
def test_fast_engine_equals_the_reference_on_a_partial_inference_mesh(policy: str, mode: str) -> None:
    cost, placement = mesh()
    config = SimConfig(mode=mode, duration_s=400.0, warmup_s=100.0, policy=policy, seed=2, rate_per_s=0.5 if mode == "online" else None)
    fast, reference = same_results(config, cost, placement, AzureConversationLengths())
    assert fast.completed > 0 and any(n.busy_fraction > 0.2 for n in fast.nodes)
    assert fast.events < reference.events  # some prompts and tokens landed on a busy node


@pytest.mark.parametrize("policy", ["iwrr", "swarm"])
def test_fast_engine_equals_the_reference_on_the_24_node_cluster(policy: str) -> None:
    from helix_jax.solver.plan import plan

    topo = load_topology(ROOT / "topologies" / "single-region-24-llama2-70b.json")
    cost = CostModel(topo)
    placement = plan(topo, method="petals", cost_model=cost)
    fast, reference = same_results(SimConfig(duration_s=200.0, warmup_s=60.0, policy=policy), cost, placement, AzureConversationLengths())
    assert fast.metrics.decode_tokens_per_s > 0
    assert fast.events < 0.8 * reference.events


def test_routing_tables_hold_exactly_the_requests_in_flight() -> None:
    """The hot path routes by each node's `next_hop` (requests not taking `main_next`) and
    `next_counts`: filled at admission, emptied at completion, so after a run with completions
    they hold the requests in flight routed through the node, each with its route's next node."""
    cost, placement = mesh()
    sim = Simulator(placement, cost, AzureConversationLengths(), SimConfig(duration_s=400.0, warmup_s=100.0, seed=2))
    res = sim.run()
    assert res.completed > 0 and res.in_flight_at_end > 0
    assert any(len(node.next_counts) > 1 for node in sim.nodes.values())  # a node whose requests diverge
    for name, node in sim.nodes.items():
        assert sum(node.next_counts.values()) == sim.scheduler.node_in_flight(name)
        assert len(node.next_hop) == sum(n for dst, n in node.next_counts.items() if dst != node.main_next)
        for req, dst in node.next_hop.items():
            hops = [hop.node for hop in req.route]
            assert dst == (hops + [C])[hops.index(name) + 1] != node.main_next


# Results of the engine at commit 994e6ca, before the step path's shortcuts (a step of one prompt
# chunk, a finished prompt sent without grouping, reused Hops): both engines share that path, so
# their equality alone would not notice a shortcut that changed what both do.
RECORDED = {  # case -> (completed, admitted, node steps, decode tok/s, TTFT mean ms, TPOT mean ms, mean in flight)
    "mesh-iwrr-offline": (4, 482, 440, 25.94, 244743.29277508287, 8904.029756765309, 480.73806251865994),
    "mesh-swarm-online": (4, 230, 648, 21.006666666666668, 11007.429429623337, 6609.489396852563, 143.9791226661686),
    "24-petals-iwrr": (46, 417, 38743, 95.45714285714286, 129209.57287888498, 1534.8604435751276, 384.6101678878874),
}


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_results_equal_those_recorded_before_the_step_shortcuts(case: str) -> None:
    if case.startswith("mesh"):
        cost, placement = mesh()
        policy, mode = case.split("-")[1:]
        config = SimConfig(mode=mode, duration_s=400.0, warmup_s=100.0, policy=policy, seed=2, rate_per_s=0.5 if mode == "online" else None)
    else:
        from helix_jax.solver.plan import plan

        topo = load_topology(ROOT / "topologies" / "single-region-24-llama2-70b.json")
        cost = CostModel(topo)
        placement = plan(topo, method="petals", cost_model=cost)
        config = SimConfig(duration_s=200.0, warmup_s=60.0, policy="iwrr")
    res = Simulator(placement, cost, AzureConversationLengths(), config).run()
    m = res.metrics
    assert (
        res.completed,
        res.admitted,
        sum(n.steps for n in res.nodes),
        m.decode_tokens_per_s,
        m.ttft.mean_ms,
        m.tpot.mean_ms,
        res.mean_in_flight,
    ) == RECORDED[case]
