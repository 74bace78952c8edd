"""A real deployment in-test: coordinator thread + 3 worker processes over real ZeroMQ, the
shipped small CPU topology (tiny-8), a partial-inference placement, small KV budgets.

One deployment serves every test of this module (warm-up dominates the cost); the last test
shuts it down and checks that nothing is left behind.
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
from helix_jax.model import SamplingParams
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime import wire
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.runtime.deploy import LocalDeployment
from helix_jax.topology import load_topology, tiny_topology_path

MAX_SEQ_LEN = 128
KV_TOKENS = 2 * MAX_SEQ_LEN  # two sequences per worker: bursts must queue
QUEUE_LIMIT = 40
PROMPTS = ["Hello, helix!", "max-flow", "A100 + T4 + L4", "x"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, cpu_small_placement: Placement):
    """cpu_small_placement (tests/conftest.py) served by three worker processes."""
    topo = load_topology(tiny_topology_path())
    cfg = ServeConfig(topo, cpu_small_placement, topo.model, weights="random:0", max_seq_len=MAX_SEQ_LEN,
                      kv_tokens=KV_TOKENS, queue_limit=QUEUE_LIMIT)
    dep = LocalDeployment(cfg, load_tokenizer(topo.model), log_dir=tmp_path_factory.mktemp("workers"))
    with dep:
        dep.wait_ready(timeout_s=400)
        yield dep


@pytest.fixture(scope="module")
def client(deployment: LocalDeployment):
    with Client(deployment.client_endpoint, timeout_s=180) as c:
        yield c


def _ids(text: str) -> list[int]:
    return load_tokenizer(load_topology(tiny_topology_path()).model).encode(text)


def test_twenty_concurrent_greedy_requests_match_local_generate(client: Client, reference,
                                                               cpu_small_placement: Placement) -> None:
    jobs = [(PROMPTS[i % 4], 6 + (i % 3) * 3, i % 2 == 0) for i in range(20)]

    def one(job):
        prompt, max_tokens, as_ids = job
        return client.generate(_ids(prompt) if as_ids else prompt, max_tokens=max_tokens)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, jobs))
    routes = set()
    for (prompt, max_tokens, _), res in zip(jobs, results):
        assert list(res.ids) == reference(_ids(prompt), max_tokens), prompt
        assert res.prompt_tokens == len(_ids(prompt))
        assert res.timings.ttft_s > 0 and len(res.timings.token_times_s) == len(res.ids)
        routes.add(res.route)
    ranges = cpu_small_placement.ranges
    for route in routes:  # each hop runs the tail of its node's range; hops chain layers 0..8
        assert route[0][1] == 0 and route[-1][2] == 8, route
        assert all(a[2] == b[1] for a, b in zip(route, route[1:])), route
        assert all(ranges[n][0] <= s < e == ranges[n][1] for n, s, e in route), route
    assert any(len(r) == 3 for r in routes) or len(routes) > 1  # flow-weighted routing spreads


def test_sampled_request_matches_local_and_streams(client: Client, reference) -> None:
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=7)
    stream = client.stream(PROMPTS[0], max_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=7)
    streamed = [tok.token_id for tok in stream]
    assert stream.result is not None and list(stream.result.ids) == streamed
    assert streamed == reference(_ids(PROMPTS[0]), 10, params)


def test_async_client_runs_requests_concurrently(deployment: LocalDeployment, reference) -> None:
    async def main():
        async with AsyncClient(deployment.client_endpoint, timeout_s=180) as ac:
            results = await asyncio.gather(*(ac.generate(p, max_tokens=5) for p in PROMPTS))
            tokens = [t.token_id async for t in ac.stream(PROMPTS[1], max_tokens=4)]
            return results, tokens

    results, tokens = asyncio.run(main())
    for prompt, res in zip(PROMPTS, results):
        assert list(res.ids) == reference(_ids(prompt), 5)
    assert tokens == reference(_ids(PROMPTS[1]), 4)


def test_burst_beyond_kv_waits_in_queue_then_completes(deployment: LocalDeployment, client: Client,
                                                       cpu_small_placement: Placement) -> None:
    coordinator = deployment.coordinator
    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda i: client.generate([65 + i % 20] * 10, max_tokens=30), range(30)))
    assert all(len(r.ids) == 30 or r.finish_reason == "eos" for r in results)
    stats = coordinator.stats()
    assert stats["peak_queued"] > 0  # the burst did not fit at once
    for node, budget in stats["budgets"].items():
        assert 0 < stats["peak_kv_used"][node] <= budget
    assert budgets_match_workers(stats["budgets"], cpu_small_placement)
    assert stats["in_flight"] == 0 and stats["queued"] == 0


def budgets_match_workers(budgets: dict[str, int], placement: Placement) -> bool:
    """Each budget is the worker's real KV: slots x max_seq_len x layers held."""
    ranges = placement.ranges
    return all(budgets[n] == KV_TOKENS * (e - s) for n, (s, e) in ranges.items())


@pytest.mark.parametrize("kwargs, needle", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="hi", max_tokens=0), "max_tokens must be positive"),
    (dict(prompt="hi", temperature=-1.0), "temperature must be in"),
    (dict(prompt="hi", top_p=0.0), "top_p must be in"),
    (dict(prompt=[5, 999]), "outside the vocabulary"),
    (dict(prompt="hi", max_tokens=500), "prompt too long"),
    (dict(prompt="hi", stop=[""]), "stop must be"),
])
def test_bad_requests_get_a_clear_error_while_others_complete(client: Client, reference, kwargs, needle) -> None:
    good = {}
    worker = threading.Thread(target=lambda: good.setdefault("r", client.generate(PROMPTS[2], max_tokens=6)))
    worker.start()
    prompt = kwargs.pop("prompt")
    with pytest.raises(RequestError, match=needle):
        client.generate(prompt, **{"max_tokens": 4, **kwargs})
    worker.join(120)
    assert list(good["r"].ids) == reference(_ids(PROMPTS[2]), 6)


def test_overload_is_a_clear_error_and_cancel_frees_the_queue(client: Client, reference) -> None:
    streams = [client.stream([70, 71, 72, 73], max_tokens=100) for _ in range(QUEUE_LIMIT + 20)]
    overloaded = 0
    for stream in reversed(streams[-10:]):  # at most ~6 run + 40 wait: the last 10 cannot fit
        with pytest.raises(OverloadedError, match="queue is full"):
            next(iter(stream))
        overloaded += 1
    for stream in streams:
        stream.cancel()
    assert overloaded == 10
    assert list(client.generate(PROMPTS[3], max_tokens=5).ids) == reference(_ids(PROMPTS[3]), 5)


def test_garbage_on_every_socket_is_rejected_and_harmless(deployment: LocalDeployment, client: Client,
                                                          reference) -> None:
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
        wire.encode(wire.make("step", [np.zeros((2, 7), np.float32)], request_id="h1",
                              route=[["cpu-2", 0, 4], ["cpu-1", 4, 8]], hop=1, position=0, index=0,
                              sampling=sampling)),
        wire.encode(wire.make("step", [np.zeros(3, np.int32)], request_id="h2", route=[["cpu-9", 0, 8]],
                              hop=0, position=0, index=0, sampling=sampling)),
        wire.encode(wire.make("step", [np.zeros(3, np.float32)], request_id="h3", route=[["cpu-0", 0, 6]],
                              hop=0, position=0, index=0, sampling=sampling)),
        wire.encode(wire.make("step", [np.zeros(3, np.int32)], request_id="h4", route=[["cpu-0", 0, 6]],
                              hop=0, position=0, index=0, sampling={"temperature": "hot"})),
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
        assert list(res.ids) == reference(_ids(prompt), 6)
    assert all(w.process.poll() is None for w in deployment.workers)


def test_generate_command_with_endpoint(deployment: LocalDeployment, reference) -> None:
    import json

    from typer.testing import CliRunner

    from helix_jax.cli.main import app

    runner = CliRunner()
    out = runner.invoke(app, ["generate", "--endpoint", deployment.client_endpoint, "--prompt-ids",
                              "256,72,105", "--max-tokens", "5", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["ids"] == reference([256, 72, 105], 5)
    streamed = runner.invoke(app, ["generate", "--endpoint", deployment.client_endpoint, "--prompt", "x",
                                   "--max-tokens", "4", "--stream"])
    assert streamed.exit_code == 0, streamed.output


def test_shutdown_leaves_no_process_or_socket_behind(deployment: LocalDeployment) -> None:
    endpoint = deployment.client_endpoint
    deployment.close()
    assert [w.process.returncode for w in deployment.workers] == [0, 0, 0]
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    try:
        sock.bind(endpoint)  # the coordinator released its port
    finally:
        sock.close(0)
