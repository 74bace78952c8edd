"""Hostile and broken input against a live deployment (issue 19's findings), exact and
event-driven on the in-process cluster (real coordinator, workers, wire, scheduler; FakeRunners):
each case reproduces what once crashed or hijacked a deployment and asserts the safe outcome,
then checks that an ordinary request still gets exactly its tokens.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import zmq

from helix_jax.client import Client
from helix_jax.errors import HelixError, RequestError
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime import wire
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.runtime.emulation import EmulationSpec
from helix_jax.runtime.runner import RunnerSpec
from helix_jax.runtime.stage_host import StageHost
from helix_jax.runtime.worker import KV_LEASE_S
from helix_jax.testing import FakeRunner, InProcessCluster, fake_generation
from helix_jax.topology import load_topology, tiny_topology_path

TOPOLOGY = load_topology(tiny_topology_path())
VOCAB = TOPOLOGY.model.vocab_size


@pytest.fixture(scope="module")
def cluster(cpu_small_placement: Placement):
    cfg = ServeConfig(TOPOLOGY, cpu_small_placement, TOPOLOGY.model, max_seq_len=128, kv_tokens=8 * 128, heartbeat_timeout_s=120)
    with InProcessCluster(cfg, load_tokenizer(TOPOLOGY.model)) as c:
        yield c.wait_ready()


@pytest.fixture(scope="module")
def client(cluster: InProcessCluster):
    with Client(cluster.client_endpoint, timeout_s=30) as c:
        yield c


def still_serving(cluster: InProcessCluster, client: Client) -> None:
    assert cluster.coordinator is not None
    ids = [256, 72, 105]
    assert list(client.generate(ids, max_tokens=6).ids) == fake_generation(ids, 6, VOCAB, stop_ids=cluster.coordinator.stop_ids)
    assert all(w.thread.is_alive() for w in cluster.workers if w is cluster.worker(w.node))


def test_a_huge_top_k_is_refused_at_admission(cluster: InProcessCluster, client: Client) -> None:
    """Finding 1: top_k=2**40 passed admission and overflowed int32 in every worker it reached."""
    with pytest.raises(RequestError, match=f"top_k must be at most the vocabulary size {VOCAB}"):
        client.generate([256, 72, 105], max_tokens=4, top_k=VOCAB + 1, temperature=1.0)
    still_serving(cluster, client)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(top_k=2**40), "top_k 1099511627776 is out of range"),
        (dict(max_tokens=2**64), "max_tokens 18446744073709551616 is out of range"),
        (dict(seed=-1), "seed must be in"),
        (dict(prompt=[256, 2**70]), "prompt token id 1180591620717411303424 is out of range"),
        (dict(prompt="a\ud800b"), "not valid Unicode"),
        (dict(stop=["\udc00"]), "not valid Unicode"),
    ],
)
def test_the_client_refuses_what_the_wire_cannot_carry(cluster: InProcessCluster, client: Client, kwargs, needle) -> None:
    """Finding 6: such values killed the Client's I/O thread and hung every call on it."""
    prompt = kwargs.pop("prompt", "hi")
    with pytest.raises(RequestError, match=needle):
        client.generate(prompt, **{"max_tokens": 4, **kwargs})
    still_serving(cluster, client)  # the same Client still works


def test_a_token_id_past_int32_from_a_peer_is_dropped(cluster: InProcessCluster, client: Client) -> None:
    """Finding 2: a `sampled` with token_id=2**31 killed the coordinator's thread."""
    coord = cluster.coordinator
    assert coord is not None
    runner = cluster.runner("cpu-1")
    runner.freeze()  # a request sits at its exit hop while the forgeries arrive
    stream = client.stream([256, 65], max_tokens=5)
    cluster.wait_until(lambda: coord.stats()["in_flight"] == 1, "the request in flight")
    rid = next(iter(coord._live))
    before = coord.dropped
    push = wire.configure(zmq.Context.instance().socket(zmq.PUSH))
    push.connect(coord.data_endpoint)
    for token in (2**31, 2**62, -1, VOCAB):
        push.send_multipart(wire.encode(wire.make("sampled", request_id=rid, index=0, token_id=token, node="cpu-1")))
    push.send_multipart(wire.encode(wire.make("sampled", request_id=rid, index=0, token_id=7, node="cpu-0")))
    push.close(linger=2000)
    cluster.wait_until(lambda: coord.dropped == before + 5, "all five forgeries refused")
    runner.thaw()
    assert [t.token_id for t in stream] == fake_generation([256, 65], 5, VOCAB, stop_ids=coord.stop_ids)
    still_serving(cluster, client)


def test_a_batch_that_raises_fails_its_requests_and_the_worker_goes_on(cluster: InProcessCluster, client: Client) -> None:
    """A bug in a batch (here OverflowError from the runner) used to kill the worker; now the
    request it hit fails with the reason, is not replayed elsewhere, and the worker serves on."""
    coord = cluster.coordinator
    assert coord is not None
    resumed = coord.stats()["resumed"]
    cluster.runner("cpu-1").fail_next(OverflowError("Python int too large to convert to C int"))
    cluster.runner("cpu-1").fail_next(OverflowError("Python int too large to convert to C int"))
    with pytest.raises(RequestError, match="node cpu-1 could not run this request: OverflowError: Python int too large"):
        client.generate([256, 66], max_tokens=5)
    assert coord.stats()["resumed"] == resumed and coord.stats()["down_nodes"] == {}
    assert cluster.worker("cpu-1").thread.is_alive()
    still_serving(cluster, client)
    assert coord.stats()["in_flight"] == 0 and all(coord.scheduler.ledger.used(n) == 0 for n in coord.nodes)


def test_garbage_fields_on_the_coordinators_data_socket_are_harmless(cluster: InProcessCluster, client: Client) -> None:
    coord = cluster.coordinator
    assert coord is not None
    before = coord.dropped
    push = wire.configure(zmq.Context.instance().socket(zmq.PUSH))
    push.connect(coord.data_endpoint)
    for msg in (
        wire.make("abort", request_id="r-nobody", node="cpu-1", message="x"),
        wire.make("step", [np.zeros(2, np.int32)], request_id="x", route=[], hop=0, position=0, index=0),
        wire.make("free", request_id="x"),
    ):
        push.send_multipart(wire.encode(msg))
    push.close(linger=2000)
    # the step and the free are refused; an abort of a request nobody holds changes nothing
    cluster.wait_until(lambda: coord.dropped == before + 2, "the step and the free refused")
    still_serving(cluster, client)


def test_a_duplicate_in_flight_id_is_refused_without_touching_the_first_stream(cluster: InProcessCluster) -> None:
    """Finding 7: the duplicate's error carried the same id, so the first stream's reader saw it."""
    coord = cluster.coordinator
    assert coord is not None
    cluster.runner("cpu-1").freeze()
    dealer = wire.configure(zmq.Context.instance().socket(zmq.DEALER))
    dealer.connect(cluster.client_endpoint)
    try:
        generate = wire.make("generate", request_id="same", prompt_ids=[256, 70], max_tokens=3, temperature=0.0, top_k=0, top_p=1.0, seed=0)
        dealer.send_multipart(wire.encode(generate))
        cluster.wait_until(lambda: coord.stats()["in_flight"] == 1, "the first request in flight")
        dealer.send_multipart(wire.encode(generate))
        assert dealer.poll(30_000)
        _, reply = wire.recv(dealer)
        assert reply.kind == "error" and reply.get("request_id") is None and "already in flight" in reply["message"]
    finally:
        cluster.runner("cpu-1").thaw()
    tokens = []
    while True:  # the first stream, whole and untouched
        assert dealer.poll(30_000)
        _, msg = wire.recv(dealer)
        assert msg["request_id"] == "same" and msg.kind in ("token", "done"), msg
        if msg.kind == "done":
            break
        tokens.append(msg["token_id"])
    dealer.close(0)
    assert tokens == fake_generation([256, 70], 3, VOCAB, stop_ids=coord.stop_ids)


def test_clients_fail_fast_when_the_coordinator_stops_or_is_lost(cpu_small_placement: Placement) -> None:
    """Finding 6: when the coordinator died or deploy was interrupted, streams got nothing until
    their timeout. Now a stopping coordinator tells every in-flight client, and a client whose
    coordinator stops answering its pings fails every waiting call at once."""
    cfg = ServeConfig(TOPOLOGY, cpu_small_placement, TOPOLOGY.model, max_seq_len=128, heartbeat_timeout_s=120)
    cluster = InProcessCluster(cfg, load_tokenizer(TOPOLOGY.model)).start().wait_ready()
    try:
        cluster.runner("cpu-1").freeze()
        with Client(cluster.client_endpoint, timeout_s=300) as client:
            streams = [client.stream([256, 70 + i], max_tokens=5) for i in range(3)]
            cluster.wait_until(lambda: cluster.coordinator.stats()["in_flight"] == 3, "3 requests in flight")
            cluster.coordinator.stop()
            for stream in streams:
                with pytest.raises(HelixError, match="the deployment is shutting down"):
                    list(stream)
    finally:
        cluster.close()
    # a coordinator that accepts but never answers: the ping finds out
    router = zmq.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=300, ping_interval_s=0.1, lost_after_s=0.5) as client:
            with pytest.raises(HelixError, match="lost the coordinator at .* no reply to a ping within 0.5 s"):
                client.generate([256, 70], max_tokens=3)
            with pytest.raises(HelixError, match="lost the coordinator"):  # and every later call
                client.generate([256, 71], max_tokens=3)
    finally:
        router.close(0)


def test_a_prompt_too_large_for_the_wire_is_refused_by_the_client(client: Client, cluster: InProcessCluster) -> None:
    """Finding 6: a 2 MB prompt got an error with request_id None that never reached the caller."""
    with pytest.raises(RequestError, match="request too large: .* bytes encoded"):
        client.generate("x" * (2 << 20), max_tokens=2)
    still_serving(cluster, client)


def test_one_clients_flood_gets_overloaded_while_another_still_gets_in(cpu_small_placement: Placement) -> None:
    """Finding 7: 1200 requests from one socket filled the whole queue for everyone."""
    cfg = ServeConfig(
        TOPOLOGY,
        cpu_small_placement,
        TOPOLOGY.model,
        max_seq_len=128,
        kv_tokens=2 * 128,
        queue_limit=8,
        client_queue_limit=4,
        heartbeat_timeout_s=120,
    )
    from helix_jax.errors import OverloadedError

    with InProcessCluster(cfg, load_tokenizer(TOPOLOGY.model)) as cluster:
        coord = cluster.wait_ready().coordinator
        assert coord is not None
        for node in ("cpu-0", "cpu-2"):
            cluster.runner(node).freeze()
        try:
            with Client(cluster.client_endpoint, timeout_s=60) as flood, Client(cluster.client_endpoint, timeout_s=60) as other:
                streams = [flood.stream([256, 70], max_tokens=100) for _ in range(20)]
                cluster.wait_until(lambda: coord.stats()["in_flight"] + coord.stats()["queued"] + coord.rejected >= 20, "the flood handled")
                running = coord.stats()["in_flight"]
                assert coord.stats()["queued"] == 4 and coord.rejected == 20 - running - 4
                for stream in streams[running + 4 :]:
                    with pytest.raises(OverloadedError, match="already has 4 requests waiting"):
                        next(iter(stream))
                mine = [other.stream([256, 71], max_tokens=3) for _ in range(3)]
                cluster.wait_until(lambda: coord.stats()["queued"] == 7, "the other client's requests queued")
                for node in ("cpu-0", "cpu-2"):
                    cluster.runner(node).thaw()
                for stream in mine:
                    assert [t.token_id for t in stream] == fake_generation([256, 71], 3, VOCAB, stop_ids=coord.stop_ids)
                for stream in streams[: running + 4]:
                    stream.cancel()
        finally:
            for node in ("cpu-0", "cpu-2"):
                cluster.runner(node).thaw()


def _lease_spec() -> RunnerSpec:
    """A stage of 8 layers whose page pool holds four 64-token requests."""
    return RunnerSpec(
        TOPOLOGY.model, 0, 8, "random:0", max_slots=8, max_seq_len=64, prefill_buckets=(16,), decode_buckets=(4,), num_pages=16
    )


def _first_step(request_id: str, kv_tokens: int) -> wire.Message:
    """A request's first step straight onto the node's data socket (no coordinator behind it)."""
    sampling = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    ids = [np.asarray([1, 2, 3], np.int32)]
    return wire.make(
        "step", ids, request_id=request_id, route=[["n", 0, 8]], hop=0, position=0, index=0, sampling=sampling, kv_tokens=kv_tokens
    )


def test_kv_taken_by_a_forged_step_is_reclaimed_when_its_lease_ends() -> None:
    """Finding 5: forged steps for made-up ids each held a KV slot forever; now a request that
    gets no step for the lease is released, and its pages return to the pool (exact clock)."""
    host = StageHost(FakeRunner(_lease_spec()), "n", 0, 4, 16)
    free_pages = host.engine.pages_available
    host.enqueue(_first_step("forged", kv_tokens=64))
    seen = 1000.0  # a whole number of seconds: seen + 300.0 - seen is exactly 300.0 (not so for any clock reading)
    host.run(host.pick_batch(now=seen))
    assert host.engine.has_request("forged") and host.engine.pages_available < free_pages
    assert host.last_step["forged"] == seen
    assert host.expire(seen + 300.0, 300.0) == []  # within its lease
    assert host.expire(seen + 300.5, 300.0) == ["forged"]
    assert not host.engine.has_request("forged") and host.engine.pages_available == free_pages


def test_a_step_waiting_at_a_busy_node_keeps_its_request_past_the_lease() -> None:
    """The emulated 24-node run at time scale 12 reclaimed the KV of live requests whose steps
    sat in a node's queue for over the lease (behind long prompts): a queued step is a live
    request, and a step taken into a batch renews its lease (exact clock)."""
    host = StageHost(FakeRunner(_lease_spec()), "n", 0, 4, 16)
    for rid in "abcde":  # four fill the page pool; e waits for pages
        host.enqueue(_first_step(rid, kv_tokens=64))
    batch = host.pick_batch()
    assert [p.item[0].request_id for p in batch] == list("abcd") and list(host.waiting) == ["e"]
    host.run(batch)
    later = float(math.ceil(host.last_step["e"])) + 10_000.0  # whole seconds: the lease boundary below is exact
    assert host.expire(later, 300.0) == list("abcd")  # e still waits here
    (taken,) = host.pick_batch(now=later)  # the pages came back: e runs, and its lease starts then
    assert taken.item[0].request_id == "e"
    assert host.expire(later + 300.0, 300.0) == [] and host.expire(later + 300.5, 300.0) == ["e"]


def test_a_request_two_failed_nodes_carried_is_failed_not_replayed_again(cpu_small_placement: Placement) -> None:
    """A request that may be what kills workers must not take the whole cluster down: after
    the second node lost under it, it fails with the nodes named, and the others go on."""
    cfg = ServeConfig(TOPOLOGY, cpu_small_placement, TOPOLOGY.model, max_seq_len=128, heartbeat_timeout_s=120)
    with InProcessCluster(cfg, load_tokenizer(TOPOLOGY.model)) as cluster:
        coord = cluster.wait_ready().coordinator
        assert coord is not None
        cluster.runner("cpu-1").freeze()  # the only exit: the request waits there, its route fixed
        with Client(cluster.client_endpoint, timeout_s=60) as client:
            stream = client.stream([256, 72], max_tokens=4)
            cluster.wait_until(lambda: coord.stats()["in_flight"] == 1, "the request in flight")
            first = next(iter(coord._live.values())).route[0].node
            cluster.kill(first)
            cluster.wait_until(lambda: coord.resumed == 1 and coord.stats()["in_flight"] == 1, "resumed once")
            second = next(iter(coord._live.values())).route[0].node
            assert second != first
            cluster.kill(second)
            with pytest.raises(
                RequestError, match=f"in flight on 2 nodes that went out of service .*{first}.*{second}.*it is not retried again"
            ):
                list(stream)
            assert coord.resumed == 1 and coord.stats()["in_flight"] == 0
        cluster.runner("cpu-1").thaw()


def test_the_lease_stretches_with_the_emulations_time_scale(cpu_small_placement: Placement) -> None:
    """Under `--emulate` at time scale 12 a round trip of a few emulated seconds takes minutes
    of wall clock: each worker's lease is the lease x the time scale."""
    cfg = ServeConfig(TOPOLOGY, cpu_small_placement, TOPOLOGY.model, max_seq_len=128, emulation=EmulationSpec.for_topology(TOPOLOGY, 12.0))
    with InProcessCluster(cfg, load_tokenizer(TOPOLOGY.model)) as cluster:
        cluster.wait_ready()
        assert {w.node: w.worker.kv_lease_s for w in cluster.workers} == {node: 12.0 * KV_LEASE_S for node in cpu_small_placement.ranges}
    plain = ServeConfig(TOPOLOGY, cpu_small_placement, TOPOLOGY.model, max_seq_len=128)
    with InProcessCluster(plain, load_tokenizer(TOPOLOGY.model)) as cluster:
        cluster.wait_ready()
        assert {w.worker.kv_lease_s for w in cluster.workers} == {KV_LEASE_S}
