"""A deployment in-test: the real coordinator, workers, wire format and scheduler, as threads
over loopback ZeroMQ (helix_jax.testing.InProcessCluster), with FakeRunners in place of the
layers, so every stream is known in advance (`fake_generation`). The shipped tiny topology, a
partial-inference placement, small KV budgets. The real model's deployment is
tests/test_real_deploy.py; real worker processes: tests/test_deploy_cli.py.

One cluster serves every test of this module; the last test shuts it down and checks that
nothing is left behind.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import msgpack
import numpy as np
import pytest
import zmq

from helix_jax.client import AsyncClient, Client
from helix_jax.errors import OverloadedError, RequestError
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime import wire
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.testing import InProcessCluster, fake_generation
from helix_jax.topology import load_topology, tiny_topology_path

MAX_SEQ_LEN = 128
KV_TOKENS = 2 * MAX_SEQ_LEN  # two whole sequences per worker: bursts must queue
QUEUE_LIMIT = 40
PROMPTS = ["Hello, helix!", "max-flow", "A100 + T4 + L4", "x"]
TOPOLOGY = load_topology(tiny_topology_path())
TOKENIZER = load_tokenizer(TOPOLOGY.model)


@pytest.fixture(scope="module")
def deployment(cpu_small_placement: Placement):
    """cpu_small_placement (tests/conftest.py) served by three worker threads."""
    cfg = ServeConfig(
        TOPOLOGY,
        cpu_small_placement,
        TOPOLOGY.model,
        weights="random:0",
        max_seq_len=MAX_SEQ_LEN,
        kv_tokens=KV_TOKENS,
        queue_limit=QUEUE_LIMIT,
        client_queue_limit=QUEUE_LIMIT,  # one client fills it
        heartbeat_timeout_s=120,
    )  # frozen runners (a hung GPU) must not be timed out here
    with InProcessCluster(cfg, TOKENIZER) as cluster:
        yield cluster.wait_ready()


@pytest.fixture(scope="module")
def client(deployment: InProcessCluster):
    with Client(deployment.client_endpoint, timeout_s=60) as c:
        yield c


def _ids(text: str) -> list[int]:
    return TOKENIZER.encode(text)


def expected(deployment: InProcessCluster, prompt: str | list[int], max_tokens: int, sampling: SamplingParams | None = None) -> list[int]:
    ids = _ids(prompt) if isinstance(prompt, str) else prompt
    assert deployment.coordinator is not None
    return fake_generation(ids, max_tokens, TOPOLOGY.model.vocab_size, sampling, deployment.coordinator.stop_ids)


def test_twenty_concurrent_greedy_requests_stream_exactly(
    client: Client, deployment: InProcessCluster, cpu_small_placement: Placement
) -> None:
    jobs = [(PROMPTS[i % 4], 6 + (i % 3) * 3, i % 2 == 0) for i in range(20)]

    def one(job):
        prompt, max_tokens, as_ids = job
        return client.generate(_ids(prompt) if as_ids else prompt, max_tokens=max_tokens)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, jobs))
    routes = set()
    for (prompt, max_tokens, _), res in zip(jobs, results):
        assert list(res.ids) == expected(deployment, prompt, max_tokens), prompt
        assert res.prompt_tokens == len(_ids(prompt))
        assert res.timings.ttft_s > 0 and len(res.timings.token_times_s) == len(res.ids)
        routes.add(res.route)
    ranges = cpu_small_placement.ranges
    for route in routes:  # each hop runs the tail of its node's range; hops chain layers 0..8
        assert route[0][1] == 0 and route[-1][2] == 8, route
        assert all(a[2] == b[1] for a, b in zip(route, route[1:])), route
        assert all(ranges[n][0] <= s < e == ranges[n][1] for n, s, e in route), route
    assert any(len(r) == 3 for r in routes) or len(routes) > 1  # flow-weighted routing spreads


def test_sampling_reaches_the_last_stage_and_streams(client: Client, deployment: InProcessCluster) -> None:
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=7)
    stream = client.stream(PROMPTS[0], max_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=7)
    streamed = [tok.token_id for tok in stream]
    assert stream.result is not None and list(stream.result.ids) == streamed
    assert streamed == expected(deployment, PROMPTS[0], 10, params)
    assert streamed != expected(deployment, PROMPTS[0], 10)  # the seed counts only when sampling


def test_async_client_runs_requests_concurrently(deployment: InProcessCluster) -> None:
    async def main():
        async with AsyncClient(deployment.client_endpoint, timeout_s=180) as ac:
            results = await asyncio.gather(*(ac.generate(p, max_tokens=5) for p in PROMPTS))
            tokens = [t.token_id async for t in ac.stream(PROMPTS[1], max_tokens=4)]
            return results, tokens

    results, tokens = asyncio.run(main())
    for prompt, res in zip(PROMPTS, results):
        assert list(res.ids) == expected(deployment, prompt, 5)
    assert tokens == expected(deployment, PROMPTS[1], 4)


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


def test_generate_command_with_endpoint(deployment: InProcessCluster) -> None:
    import json

    from typer.testing import CliRunner

    from helix_jax.cli.main import app

    runner = CliRunner()
    out = runner.invoke(
        app, ["generate", "--endpoint", deployment.client_endpoint, "--prompt-ids", "256,72,105", "--max-tokens", "5", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["ids"] == expected(deployment, [256, 72, 105], 5)
    streamed = runner.invoke(app, ["generate", "--endpoint", deployment.client_endpoint, "--prompt", "x", "--max-tokens", "4", "--stream"])
    assert streamed.exit_code == 0, streamed.output


def test_shutdown_leaves_no_thread_or_socket_behind(deployment: InProcessCluster) -> None:
    endpoint = deployment.client_endpoint
    deployment.close()
    assert [w.exit_code for w in deployment.workers] == [0, 0, 0]
    assert not any(w.thread.is_alive() for w in deployment.workers)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    try:
        sock.bind(endpoint)  # the coordinator released its port
    finally:
        sock.close(0)
