"""Node failures in the scheduler: released requests, routes that avoid the node, and clear
errors once no surviving route can hold a request (the live coordinator drives these)."""

from __future__ import annotations

import pytest

from helix_jax.errors import ConfigError, OverloadedError, RequestError
from helix_jax.placement import FlowEdge, Placement
from helix_jax.scheduler import RequestSpec, Scheduler

C = "coordinator"


def two_paths() -> Placement:
    """a -> c and b -> c both reach layer 4; c is the only exit."""
    flows = [(C, "a", 50), (C, "b", 50), ("a", "c", 50), ("b", "c", 50), ("c", C, 100)]
    return Placement("t", 4, {"a": (0, 2), "b": (0, 2), "c": (2, 4)}, tuple(FlowEdge(s, d, f) for s, d, f in flows))


def test_failed_node_releases_its_requests_in_order_and_routes_avoid_it() -> None:
    sched = Scheduler(two_paths(), {"a": 10_000, "b": 10_000, "c": 10_000}, queue_limit=2)
    for i in range(6):  # admitted one by one: the queue (limit 2) stays empty
        sched.submit(RequestSpec(f"r{i}", 10, 10))
        assert len(sched.admit_ready()) == 1
    through_a = [rid for rid in (f"r{i}" for i in range(6)) if "a" in sched.admission(rid).nodes]
    assert 0 < len(through_a) < 6  # the round robin used both entries
    released = sched.fail_node("a")
    assert [s.request_id for s in released] == through_a  # admission order
    assert sched.ledger.used("a") == 0 and sched.down_nodes == ("a",)
    assert sched.ledger.used("c") == 20 * 2 * (6 - len(through_a))  # their hops on c were freed too
    assert sched.fail_node("a") == ()  # idempotent
    # resumed at the head, past the queue limit, and never through a again
    sched.submit(RequestSpec("q0", 10, 10))
    sched.submit(RequestSpec("q1", 10, 10))
    with pytest.raises(OverloadedError):
        sched.submit(RequestSpec("q2", 10, 10))
    for spec in reversed(released):
        sched.submit(RequestSpec(spec.request_id + "'", spec.prompt_tokens, spec.max_output_tokens), front=True)
    admitted = sched.admit_ready()
    assert [a.request_id for a in admitted][: len(released)] == [s.request_id + "'" for s in released]
    assert all("a" not in a.nodes for a in admitted)
    sched.ledger.check()


def test_losing_the_only_exit_fails_every_request_with_the_reason() -> None:
    sched = Scheduler(two_paths(), {"a": 10_000, "b": 10_000, "c": 200})
    for i in range(5):
        sched.submit(RequestSpec(f"r{i}", 40, 10))
    assert len(sched.admit_ready()) == 2  # c holds 2 x (50 tokens x 2 layers)
    released = sched.fail_node("c")
    assert len(released) == 2 and sched.in_flight == 0
    assert sched.max_request_tokens == 0
    dropped = sched.drop_unroutable()
    assert [s.request_id for s, _ in dropped] == ["r2", "r3", "r4"] and sched.queue_length == 0
    assert all("out of service" in why and "c" in why for _, why in dropped)
    with pytest.raises(RequestError, match="node\\(s\\) c out of service"):
        sched.submit(RequestSpec("late", 1, 1))
    sched.ledger.check()


def test_failing_one_entry_keeps_the_queue_moving_on_the_other() -> None:
    sched = Scheduler(two_paths(), {"a": 10_000, "b": 100, "c": 10_000})
    sched.submit(RequestSpec("big", 60, 10))  # 70 tokens x 2 layers: only a has room
    assert sched.admit_ready()[0].nodes == ("a", "c")
    assert [spec.request_id for spec in sched.fail_node("a")] == ["big"]
    assert sched.drop_unroutable() == []  # the queue was empty
    with pytest.raises(RequestError, match="largest any route can hold is 50"):
        sched.submit(RequestSpec("big'", 60, 10), front=True)
    sched.submit(RequestSpec("small", 20, 10))
    assert sched.admit_ready()[0].nodes == ("b", "c")
    with pytest.raises(ConfigError):
        sched.fail_node("nope")


def test_reflow_spreads_new_requests_by_the_survivors_flows() -> None:
    flows = [(C, "a", 50), (C, "b", 40), (C, "d", 10), ("a", "c", 50), ("b", "c", 40), ("d", "c", 10), ("c", C, 100)]
    ranges = {"a": (0, 2), "b": (0, 2), "c": (2, 4), "d": (0, 2)}
    placement = Placement("t", 4, ranges, tuple(FlowEdge(s, d, f) for s, d, f in flows))
    sched = Scheduler(placement, {n: 1_000_000 for n in ranges})
    sched.fail_node("a")
    with pytest.raises(ConfigError, match="out of service"):
        sched.reflow(placement)  # the old flows still pass through a
    with pytest.raises(ConfigError, match="same layer ranges"):
        sched.reflow(Placement("t", 4, {"b": (0, 2), "c": (2, 4), "d": (0, 2)}, placement.flows[1:]))
    survivors = [(C, "b", 30), (C, "d", 10), ("b", "c", 30), ("d", "c", 10), ("c", C, 40)]
    sched.reflow(Placement("t", 4, ranges, tuple(FlowEdge(s, d, f) for s, d, f in survivors)))
    entries = []
    for i in range(40):
        sched.submit(RequestSpec(f"r{i}", 1, 1))
        entries += [adm.nodes[0] for adm in sched.admit_ready()]
    assert entries.count("b") == 30 and entries.count("d") == 10  # 3:1 as the new flows say
    sched.on_decode_token("r0")
    sched.ledger.check()


def test_restored_node_takes_requests_again_with_its_new_budget() -> None:
    sched = Scheduler(two_paths(), {"a": 10_000, "b": 10_000, "c": 10_000})
    with pytest.raises(ConfigError, match="not out of service"):
        sched.restore_node("a", 100)
    sched.submit(RequestSpec("r0", 10, 10))
    sched.admit_ready()
    sched.fail_node("c")
    assert sched.max_request_tokens == 0
    with pytest.raises(ConfigError, match="non-negative integer"):
        sched.restore_node("c", -1)
    sched.restore_node("c", 80)  # a smaller replacement: 40 tokens x 2 layers
    assert sched.down_nodes == () and sched.ledger.budget("c") == 80 and sched.max_request_tokens == 40
    sched.submit(RequestSpec("r1", 30, 10))
    assert [a.nodes[-1] for a in sched.admit_ready()] == ["c"]
    with pytest.raises(ConfigError, match="still holds"):
        sched.ledger.set_budget("c", 10)
    sched.ledger.check()
