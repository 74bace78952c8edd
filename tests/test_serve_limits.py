"""A deployment in-test at and past its limits: a burst beyond the KV budgets waits in the queue
and then completes exactly; a full queue answers OverloadedError and cancelling frees it; bad
requests get one clear error while others complete; garbage on every socket is refused and
harms nothing. The deployment and helpers are tests/serve_cluster.py's (InProcessCluster,
FakeRunners, so every stream is known in advance); serving itself: tests/test_serve_deploy.py.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import msgpack
import numpy as np
import pytest
import serve_cluster
import zmq
from serve_cluster import KV_TOKENS, PROMPTS, QUEUE_LIMIT, expected

from helix_jax.client import Client
from helix_jax.errors import OverloadedError, RequestError
from helix_jax.placement import Placement
from helix_jax.runtime import wire
from helix_jax.testing import InProcessCluster

# the shared fixtures (tests/serve_cluster.py)
deployment = serve_cluster.deployment
client = serve_cluster.client


def test_burst_beyond_kv_waits_in_queue_then_completes(
    deployment: InProcessCluster, client: Client, cpu_small_placement: Placement
) -> None:
    """Entry stages frozen: the burst fills the KV ledger exactly, the rest queues; thawed,
    every request completes with its exact stream and the ledger is empty again."""
    coordinator = deployment.coordinator
    assert coordinator is not None and coordinator.scheduler is not None
    entries = ("cpu-0", "cpu-2")
    for node in entries:
        deployment.runner(node).freeze()
    prompts = [[65 + i % 20] * 10 for i in range(30)]
    streams = [client.stream(p, max_tokens=30) for p in prompts]
    try:
        deployment.wait_until(lambda: coordinator.stats()["in_flight"] + coordinator.stats()["queued"] == 30, "all 30 submitted")
        stats = coordinator.stats()
        assert stats["queued"] > 0 and stats["in_flight"] > 0  # the burst did not fit at once
        # admission stopped exactly where the next request's reservation would overrun a hop
        for node, budget in stats["budgets"].items():
            assert 0 < coordinator.scheduler.ledger.used(node) <= budget
        assert not coordinator.scheduler.admit_ready()
    finally:
        for node in entries:
            deployment.runner(node).thaw()
    for prompt, stream in zip(prompts, streams):
        assert [t.token_id for t in stream] == expected(deployment, prompt, 30)
    stats = coordinator.stats()
    assert stats["peak_queued"] > 0
    for node, budget in stats["budgets"].items():
        assert 0 < stats["peak_kv_used"][node] <= budget and coordinator.scheduler.ledger.used(node) == 0
    assert budgets_match_workers(stats["budgets"], cpu_small_placement)
    assert stats["in_flight"] == 0 and stats["queued"] == 0


def budgets_match_workers(budgets: dict[str, int], placement: Placement) -> bool:
    """Each budget is the worker's real KV: slots x max_seq_len x layers held."""
    ranges = placement.ranges
    return all(budgets[n] == KV_TOKENS * (e - s) for n, (s, e) in ranges.items())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="hi", max_tokens=0), "max_tokens must be positive"),
        (dict(prompt="hi", temperature=-1.0), "temperature must be in"),
        (dict(prompt="hi", top_p=0.0), "top_p must be in"),
        (dict(prompt=[5, 999]), "outside the vocabulary"),
        (dict(prompt="hi", max_tokens=500), "prompt too long"),
        (dict(prompt="hi", stop=[""]), "stop must be"),
    ],
)
def test_bad_requests_get_a_clear_error_while_others_complete(client: Client, deployment: InProcessCluster, kwargs, needle) -> None:
    good = {}
    worker = threading.Thread(target=lambda: good.setdefault("r", client.generate(PROMPTS[2], max_tokens=6)))
    worker.start()
    prompt = kwargs.pop("prompt")
    with pytest.raises(RequestError, match=needle):
        client.generate(prompt, **{"max_tokens": 4, **kwargs})
    worker.join(60)
    assert list(good["r"].ids) == expected(deployment, PROMPTS[2], 6)


def test_overload_is_a_clear_error_and_cancel_frees_the_queue(client: Client, deployment: InProcessCluster) -> None:
    """Entry stages frozen: of QUEUE_LIMIT + 20 requests, those the KV admits run, QUEUE_LIMIT
    wait, and every other one gets OverloadedError; cancelling them all frees everything."""
    coordinator = deployment.coordinator
    assert coordinator is not None
    for node in ("cpu-0", "cpu-2"):
        deployment.runner(node).freeze()
    total = QUEUE_LIMIT + 20
    try:
        streams = [client.stream([70, 71, 72, 73], max_tokens=100) for _ in range(total)]
        deployment.wait_until(lambda: coordinator.stats()["queued"] == QUEUE_LIMIT, "a full queue")
        running = coordinator.stats()["in_flight"]
        overloaded = 0
        for stream in streams[running + QUEUE_LIMIT :]:
            with pytest.raises(OverloadedError, match="queue is full"):
                next(iter(stream))
            overloaded += 1
        assert overloaded == total - QUEUE_LIMIT - running and running > 0
        for stream in streams:
            stream.cancel()
    finally:
        for node in ("cpu-0", "cpu-2"):
            deployment.runner(node).thaw()
    assert list(client.generate(PROMPTS[3], max_tokens=5).ids) == expected(deployment, PROMPTS[3], 5)
    deployment.wait_until(lambda: coordinator.stats()["in_flight"] == 0, "the cancelled requests freed")
    assert coordinator.stats()["queued"] == 0


def test_garbage_on_every_socket_is_rejected_and_harmless(deployment: InProcessCluster, client: Client) -> None:
    ctx = zmq.Context.instance()
    sampling = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    bad_frames = [
        [b"\x00garbage"],
        [msgpack.packb({"v": 7, "kind": "step", "f": {}, "a": []})],
        [msgpack.packb({"v": wire.WIRE_VERSION, "kind": "nope", "f": {}, "a": []})],
        wire.encode(wire.make("free", request_id="nobody")) + [b"extra frame"],
    ]
    # the client socket answers each bad message with a ProtocolError reply
    dealer = wire.configure(ctx.socket(zmq.DEALER))
    dealer.connect(deployment.client_endpoint)
    for frames in bad_frames:
        dealer.send_multipart(frames)
        assert dealer.poll(30_000)
        _, reply = wire.recv(dealer)
        assert reply.kind == "error" and reply["error"] == "ProtocolError"
    dealer.close(0)
    # worker data sockets: garbage, wrong shapes, wrong routes, bad sampling
    endpoints = deployment.coordinator.worker_data_endpoints
    hostile = bad_frames + [
        wire.encode(
            wire.make(
                "step",
                [np.zeros((2, 7), np.float32)],
                request_id="h1",
                route=[["cpu-2", 0, 4], ["cpu-1", 4, 8]],
                hop=1,
                position=0,
                index=0,
                sampling=sampling,
            )
        ),
        wire.encode(
            wire.make(
                "step", [np.zeros(3, np.int32)], request_id="h2", route=[["cpu-9", 0, 8]], hop=0, position=0, index=0, sampling=sampling
            )
        ),
        wire.encode(
            wire.make(
                "step", [np.zeros(3, np.float32)], request_id="h3", route=[["cpu-0", 0, 6]], hop=0, position=0, index=0, sampling=sampling
            )
        ),
        wire.encode(
            wire.make(
                "step",
                [np.zeros(3, np.int32)],
                request_id="h4",
                route=[["cpu-0", 0, 6]],
                hop=0,
                position=0,
                index=0,
                sampling={"temperature": "hot"},
            )
        ),
    ]
    for endpoint in [*endpoints.values(), deployment.coordinator.data_endpoint]:
        push = wire.configure(ctx.socket(zmq.PUSH))
        push.connect(endpoint)
        for frames in hostile:
            push.send_multipart(frames)
        push.close(linger=2000)
    control = wire.configure(ctx.socket(zmq.DEALER))
    control.connect(deployment.coordinator.control_endpoint)
    for frames in bad_frames:
        control.send_multipart(frames)
    control.close(linger=2000)
    # everyone is still alive and still right
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_tokens=6), PROMPTS))
    for prompt, res in zip(PROMPTS, results):
        assert list(res.ids) == expected(deployment, prompt, 6)
    assert all(w.thread.is_alive() for w in deployment.workers)
