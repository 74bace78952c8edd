"""IWRR routing: per-edge share tracks flow share, thresholds, decode load, baselines."""

from __future__ import annotations

import collections
import random

import pytest

from helix_jax.errors import ConfigError, PlacementError, RequestError
from helix_jax.placement import FlowEdge, Hop, Placement
from helix_jax.scheduler import RequestSpec, Scheduler

C = "coordinator"


def placement_of(
    num_layers: int, ranges: dict[str, tuple[int, int]], flows: list[tuple[str, str, float]], partial: bool = True
) -> Placement:
    return Placement("t", num_layers, ranges, tuple(FlowEdge(s, d, f) for s, d, f in flows), partial_inference=partial)


def diamond() -> Placement:
    # coordinator -> a|b -> c|d -> coordinator, with a splitting 40/20 between c and d.
    return placement_of(
        8,
        {"a": (0, 4), "b": (0, 4), "c": (4, 8), "d": (4, 8)},
        [(C, "a", 60), (C, "b", 30), ("a", "c", 40), ("a", "d", 20), ("b", "d", 30), ("c", C, 40), ("d", C, 50)],
    )


def run_requests(sched: Scheduler, sizes: list[tuple[int, int]]) -> collections.Counter:
    """Admit and finish requests one at a time; count work (prompt + output) per edge."""
    work: collections.Counter = collections.Counter()
    for i, (prompt, output) in enumerate(sizes):
        sched.submit(RequestSpec(f"r{i}", prompt, output))
        (adm,) = sched.admit_ready()
        nodes = [C, *adm.nodes, C]
        sched.on_decode_token(adm.request_id, output)
        for edge in zip(nodes[:-1], nodes[1:]):
            work[edge] += prompt + output
        sched.finish(adm.request_id)
    return work


def edge_shares(placement: Placement, work: collections.Counter) -> list[tuple[float, float]]:
    """(observed share, flow share) of every flow edge within its source's outflow."""
    pairs = []
    for e in placement.flows:
        out_flow = sum(f.tokens_per_s for f in placement.out_flows(e.src))
        out_work = sum(w for (s, _), w in work.items() if s == e.src)
        pairs.append((work[(e.src, e.dst)] / out_work, e.tokens_per_s / out_flow))
    return pairs


def test_equal_requests_split_exactly_by_flow() -> None:
    p = diamond()
    work = run_requests(Scheduler(p), [(100, 20)] * 900)
    for observed, expected in edge_shares(p, work):
        assert observed == pytest.approx(expected, abs=0.01)


def test_mixed_sizes_split_work_by_flow() -> None:
    rng = random.Random(7)
    sizes = [(rng.randint(10, 2000), rng.randint(1, 1000)) for _ in range(3000)]
    p = diamond()
    work = run_requests(Scheduler(p), sizes)
    # Tolerance: one large request (~3000 tokens) against ~7.5M tokens of work on the edges.
    for observed, expected in edge_shares(p, work):
        assert observed == pytest.approx(expected, abs=0.02)


def test_round_robin_interleaves_rather_than_bursts() -> None:
    p = placement_of(2, {"a": (0, 2), "b": (0, 2)}, [(C, "a", 20), (C, "b", 10), ("a", C, 20), ("b", C, 10)])
    sched = Scheduler(p)
    picks = []
    for i in range(6):
        sched.submit(RequestSpec(f"r{i}", 10, 1))
        picks.append(sched.admit_ready()[0].nodes[0])
    # weights 2:1 -> a gets two of every three, never three in a row
    assert picks.count("a") == 4 and "aaa" not in "".join(x[0] for x in picks)


def test_edges_under_min_share_are_ignored() -> None:
    p = placement_of(2, {"a": (0, 2), "b": (0, 2)}, [(C, "a", 97), (C, "b", 3), ("a", C, 97), ("b", C, 3)])
    used = {n for (s, n) in run_requests(Scheduler(p), [(5, 5)] * 200) if s == C}
    assert used == {"a"}
    used_low_threshold = {n for (s, n) in run_requests(Scheduler(p, min_edge_share=0.01), [(5, 5)] * 200) if s == C}
    assert used_low_threshold == {"a", "b"}


def test_decode_tokens_add_load_to_the_route() -> None:
    p = placement_of(2, {"a": (0, 2), "b": (0, 2)}, [(C, "a", 10), (C, "b", 10), ("a", C, 10), ("b", C, 10)])
    sched = Scheduler(p)
    sched.submit(RequestSpec("long", 10, 500))
    (first,) = sched.admit_ready()
    sched.on_decode_token("long", 300)  # "long" stays in flight, 300 decode tokens on its edges
    picks = []
    for i in range(20):
        sched.submit(RequestSpec(f"r{i}", 10, 1))
        picks.append(sched.admit_ready()[0].nodes[0])
    other = "b" if first.nodes[0] == "a" else "a"
    # 300 tokens of decode load = 30 requests of 10 prompt tokens: all 20 go to the other node
    assert picks == [other] * 20


def test_decode_load_follows_the_flows_in_force_after_a_reflow() -> None:
    """Each edge's IWRR load is work / flow: 10 prompt + 3 decode tokens over flow 10 is 1.3. After
    a reflow the loads start afresh on the new flows, and a request admitted before keeps adding
    its decode tokens to its edges that the new flows still weigh (2 tokens / 20 = 0.1), not to
    the one they dropped."""
    ranges = {"a": (0, 2), "b": (0, 2)}
    sched = Scheduler(placement_of(2, ranges, [(C, "a", 10), (C, "b", 10), ("a", C, 10), ("b", C, 10)]))
    sched.submit(RequestSpec("r", 10, 50))
    (adm,) = sched.admit_ready()
    assert adm.nodes == ("a",)
    sched.on_decode_token("r", 3)
    assert sched.policy.load == {(C, "a"): 1.3, (C, "b"): 0.0, ("a", C): 1.3, ("b", C): 0.0}
    sched.reflow(placement_of(2, ranges, [(C, "a", 20), (C, "b", 5), ("a", C, 20), ("b", C, 5)]))
    sched.on_decode_token("r", 2)
    assert sched.policy.load == {(C, "a"): 0.1, (C, "b"): 0.0, ("a", C): 0.1, ("b", C): 0.0}
    sched.reflow(placement_of(2, ranges, [(C, "b", 5), ("b", C, 5)]))  # a carries no flow now
    sched.on_decode_token("r", 2)
    assert sched.policy.load == {(C, "b"): 0.0, ("b", C): 0.0}


def test_a_batch_of_decode_tokens_adds_the_same_loads_as_one_call_each() -> None:
    """`on_decode_tokens` (the simulator's batch back at the coordinator, one numpy call) leaves
    every edge's load bit-equal to `on_decode_token` per request in the same order (the adds to
    an edge happen in that order either way; weights 1/7 and 1/3 make rounding show), and an
    unknown id changes nothing."""
    p = diamond()
    one_by_one, batched = Scheduler(p), Scheduler(p)
    for sched in (one_by_one, batched):
        for i in range(6):
            sched.submit(RequestSpec(f"r{i}", 7 + i, 50))
        assert len(sched.admit_ready()) == 6
    rounds = [[f"r{i}" for i in range(6)], ["r3", "r1", "r3", "r0"], ["r5"]] * 7
    for rids in rounds:
        for rid in rids:
            one_by_one.on_decode_token(rid)
        batched.on_decode_tokens(rids)
    assert batched.policy.load == one_by_one.policy.load
    assert len(set(one_by_one.policy.load.values())) > 2
    before = batched.policy.load
    with pytest.raises(RequestError, match="'nope' is not in flight"):
        batched.on_decode_tokens(["r0", "nope"])
    assert batched.policy.load == before


def test_partial_inference_hops_run_only_the_remaining_layers() -> None:
    p = placement_of(6, {"a": (0, 4), "b": (2, 6), "c": (0, 2)}, [(C, "a", 10), ("a", "b", 10), (C, "c", 10), ("c", "b", 10), ("b", C, 20)])
    sched = Scheduler(p)
    routes = set()
    for i in range(4):
        sched.submit(RequestSpec(f"r{i}", 1, 1))
        routes.add(sched.admit_ready()[0].route)
    assert routes == {(Hop("a", 0, 4), Hop("b", 4, 6)), (Hop("c", 0, 2), Hop("b", 2, 6))}


@pytest.mark.parametrize("policy", ["random", "shortest-queue", "swarm"])
def test_baseline_policies_route_valid_paths(policy: str) -> None:
    p = diamond()
    sched = Scheduler(p, policy=policy, seed=3)
    seen = set()
    for i in range(200):
        sched.submit(RequestSpec(f"r{i}", 10, 10))
        (adm,) = sched.admit_ready()
        assert p.route_hops(adm.nodes) == adm.route
        seen.add(adm.nodes)
        sched.on_hop_latency(adm.nodes[0], 0.01 * (i % 7))
        sched.on_node_queue(adm.nodes[1], i % 5)
        if i % 3:
            sched.finish(adm.request_id)
    # baselines may use any valid hand-off, including b -> c which carries no flow
    assert len(seen) == 4


def test_swarm_prefers_lowest_observed_latency() -> None:
    p = diamond()
    sched = Scheduler(p, policy="swarm")
    sched.on_hop_latency("a", 0.5)
    sched.on_hop_latency("b", 0.1)
    sched.on_hop_latency("c", 0.2)
    sched.on_hop_latency("d", 0.9)
    sched.submit(RequestSpec("x", 5, 5))
    assert sched.admit_ready()[0].nodes == ("b", "c")


def test_shortest_queue_prefers_shortest_observed_queue() -> None:
    p = diamond()
    sched = Scheduler(p, policy="shortest-queue")
    for node, depth in {"a": 0, "b": 3, "c": 4, "d": 1}.items():
        sched.on_node_queue(node, depth)
    sched.submit(RequestSpec("x", 5, 5))
    assert sched.admit_ready()[0].nodes == ("a", "d")


def test_bad_inputs_raise_named_errors() -> None:
    with pytest.raises(ConfigError, match="unknown scheduling policy 'fastest'"):
        Scheduler(diamond(), policy="fastest")
    with pytest.raises(PlacementError, match="no flow out of the coordinator"):
        Scheduler(placement_of(2, {"a": (0, 2)}, []))
    with pytest.raises(PlacementError, match="a -> b is not a valid hand-off"):
        Scheduler(placement_of(4, {"a": (0, 2), "b": (3, 4)}, [(C, "a", 1), ("a", "b", 1), ("b", C, 1)]))
    with pytest.raises(ConfigError, match="no KV budget given for node"):
        Scheduler(diamond(), {"a": 10})
    with pytest.raises(ConfigError, match="queue_limit"):
        Scheduler(diamond(), queue_limit=0)
