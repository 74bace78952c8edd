"""KV admission: budgets never exceeded, queueing, backtracking, release, partial layers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helix_jax.errors import OverloadedError, RequestError
from helix_jax.placement import FlowEdge, Hop, Placement
from helix_jax.scheduler import KVLedger, RequestSpec, Scheduler

C = "coordinator"


def placement_of(num_layers, ranges, flows) -> Placement:
    return Placement("t", num_layers, ranges, tuple(FlowEdge(s, d, f) for s, d, f in flows))


def mesh() -> Placement:
    """Partial-inference mesh over 6 layers: routes of 2 or 3 hops with uneven layer counts."""
    return placement_of(
        6,
        {"a": (0, 3), "b": (0, 2), "c": (2, 5), "d": (3, 6), "e": (4, 6)},
        [(C, "a", 30), (C, "b", 20), ("a", "d", 20), ("a", "c", 10), ("b", "c", 20), ("c", "e", 30), ("d", C, 20), ("e", C, 30)],
    )


def test_ledger_counts_only_layers_run() -> None:
    p = placement_of(6, {"a": (0, 4), "b": (2, 6)}, [(C, "a", 10), ("a", "b", 10), ("b", C, 10)])
    sched = Scheduler(p, {"a": 10_000, "b": 10_000})
    sched.submit(RequestSpec("r", 100, 50))
    (adm,) = sched.admit_ready()
    assert adm.route == (Hop("a", 0, 4), Hop("b", 4, 6))
    assert sched.ledger.used("a") == 150 * 4 and sched.ledger.used("b") == 150 * 2  # not 4 layers on b
    assert sched.finish("r") and sched.ledger.used("a") == 0 and sched.ledger.used("b") == 0
    assert not sched.finish("r")


def test_full_hop_is_skipped_for_the_next_best() -> None:
    p = placement_of(2, {"a": (0, 2), "b": (0, 2)}, [(C, "a", 90), (C, "b", 10), ("a", C, 90), ("b", C, 10)])
    sched = Scheduler(p, {"a": 2 * 20, "b": 2 * 1000})
    sched.submit(RequestSpec("big", 15, 10))  # 25 tokens x 2 layers: only b has room
    assert sched.admit_ready()[0].nodes == ("b",)


def test_dead_end_branch_is_backtracked() -> None:
    # a's only successor c is full, so the walk must leave a and take b -> d.
    p = placement_of(
        4,
        {"a": (0, 2), "b": (0, 3), "c": (2, 4), "d": (3, 4)},
        [(C, "a", 90), ("a", "c", 90), ("c", C, 90), (C, "b", 10), ("b", "d", 10), ("d", C, 10)],
    )
    sched = Scheduler(p, {"a": 1000, "b": 1000, "c": 10, "d": 1000})
    sched.submit(RequestSpec("r", 10, 10))
    (adm,) = sched.admit_ready()
    assert adm.route == (Hop("b", 0, 3), Hop("d", 3, 4))
    assert sched.ledger.used("a") == 0 and sched.ledger.used("c") == 0


def test_burst_beyond_cluster_kv_is_queued_then_fully_served_in_order() -> None:
    p = mesh()
    budgets = {n: 3000 for n in p.ranges}
    sched = Scheduler(p, budgets)
    ids = [f"r{i}" for i in range(200)]
    for rid in ids:
        sched.submit(RequestSpec(rid, 200, 100))
    served: list[str] = []
    active: list[str] = []
    while len(served) < len(ids):
        admitted = sched.admit_ready()
        assert admitted or active, "stuck: nothing admitted and nothing to finish"
        served += [a.request_id for a in admitted]
        active += [a.request_id for a in admitted]
        assert sched.in_flight < len(ids)  # the burst does not fit at once
        sched.finish(active.pop(0))
    assert served == ids  # FIFO: none dropped, none overtaken
    assert sched.queue_length == 0


def test_queue_bound_and_impossible_requests() -> None:
    sched = Scheduler(mesh(), {n: 600 for n in mesh().ranges}, queue_limit=3)
    # largest route: min over hops of 600 // layers -> a(3) d(3) = 200, b(2) c(3) e(1) = 200
    assert sched.max_request_tokens == 200
    with pytest.raises(RequestError, match="needs 201 tokens of KV"):
        sched.submit(RequestSpec("huge", 200, 1))
    for i in range(3):
        sched.submit(RequestSpec(f"q{i}", 150, 50))
    with pytest.raises(OverloadedError, match="queue is full"):
        sched.submit(RequestSpec("q3", 1, 1))
    with pytest.raises(RequestError, match="already queued"):
        sched.submit(RequestSpec("q0", 1, 1))
    assert sched.finish("q1")  # cancel from the queue
    assert sched.queue_length == 2
    with pytest.raises(RequestError, match="prompt_tokens must be a positive"):
        RequestSpec("z", 0, 5)


def test_ledger_rejects_bad_budgets_and_double_reservations() -> None:
    from helix_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="KV budget of node 'x'"):
        KVLedger({"x": -1})
    ledger = KVLedger({"x": 100})
    ledger.reserve("r", [Hop("x", 0, 2)], 50)
    with pytest.raises(RequestError, match="already holds"):
        ledger.reserve("r", [Hop("x", 0, 2)], 1)
    with pytest.raises(RequestError, match="has 0 free"):
        ledger.reserve("s", [Hop("x", 0, 1)], 1)


ops = st.lists(st.tuples(st.booleans(), st.integers(1, 400), st.integers(1, 300), st.integers(0, 10**6)), min_size=1, max_size=80)


@settings(max_examples=60, deadline=None)
@given(budget_scale=st.integers(200, 5000), operations=ops, policy=st.sampled_from(["iwrr", "random", "shortest-queue", "swarm"]))
def test_reservations_never_exceed_budgets(budget_scale: int, operations, policy: str) -> None:
    p = mesh()
    budgets = {n: budget_scale * (1 + i) for i, n in enumerate(sorted(p.ranges))}
    sched = Scheduler(p, budgets, policy=policy, queue_limit=1000)
    active: list[str] = []
    for i, (is_submit, prompt, output, pick) in enumerate(operations):
        if is_submit:
            spec = RequestSpec(f"r{i}", prompt, output)
            if spec.kv_tokens > sched.max_request_tokens:
                with pytest.raises(RequestError):
                    sched.submit(spec)
            else:
                sched.submit(spec)
        elif active:
            sched.finish(active.pop(pick % len(active)))
        for adm in sched.admit_ready():
            active.append(adm.request_id)
            held = dict(sched.ledger.reservation(adm.request_id))
            assert held == {h.node: adm.spec.kv_tokens * h.num_layers for h in adm.route}
        for node in p.ranges:
            assert 0 <= sched.ledger.used(node) <= sched.ledger.budget(node)
        sched.ledger.check()
    # Drain: finishing everything in flight must let every queued request through.
    while active or sched.queue_length:
        for rid in active:
            sched.finish(rid)
        active = [a.request_id for a in sched.admit_ready()]
        assert active or not sched.queue_length, "queued requests left with an empty cluster"
    assert all(sched.ledger.used(n) == 0 for n in p.ranges)
