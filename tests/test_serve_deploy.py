"""A deployment in-test, serving: exact streams of concurrent greedy and sampled requests, the
async client, the `generate` command against an endpoint, and a clean shutdown. The deployment
and helpers are tests/serve_cluster.py's (InProcessCluster: the real coordinator, workers, wire
format and scheduler as threads, FakeRunners for the layers, so every stream is known in
advance). KV, queue and input limits: tests/test_serve_limits.py. The real model's deployment
is tests/test_demo_cli.py (the shipped default) and tests/test_ray_deploy.py; real worker processes:
tests/test_deploy_cli.py.

One cluster serves every test of this module; the last test shuts it down and checks that
nothing is left behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
import serve_cluster
import zmq
from serve_cluster import PROMPTS, expected, ids

from helix_jax.client import AsyncClient, Client
from helix_jax.errors import ConfigError, PlacementError
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.placement import FlowEdge, Placement
from helix_jax.runtime.emulation import EmulationSpec
from helix_jax.runtime.serve_config import ServeConfig
from helix_jax.testing import InProcessCluster, fake_generation

# the shared fixtures (tests/serve_cluster.py)
deployment = serve_cluster.deployment
client = serve_cluster.client


def test_twenty_concurrent_greedy_requests_stream_exactly(
    client: Client, deployment: InProcessCluster, cpu_small_placement: Placement
) -> None:
    jobs = [(PROMPTS[i % 4], 6 + (i % 3) * 3, i % 2 == 0) for i in range(20)]

    def one(job):
        prompt, max_tokens, as_ids = job
        return client.generate(ids(prompt) if as_ids else prompt, max_tokens=max_tokens)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, jobs))
    routes = set()
    for (prompt, max_tokens, _), res in zip(jobs, results):
        assert list(res.ids) == expected(deployment, prompt, max_tokens), prompt
        assert res.prompt_tokens == len(ids(prompt))
        assert res.timings.ttft_s > 0 and len(res.timings.token_times_s) == len(res.ids)
        routes.add(res.route)
    ranges = cpu_small_placement.ranges
    for route in routes:  # each hop runs the tail of its node's range; hops chain layers 0..8
        assert route[0][1] == 0 and route[-1][2] == 8, route
        assert all(a[2] == b[1] for a, b in zip(route, route[1:])), route
        assert all(ranges[n][0] <= s < e == ranges[n][1] for n, s, e in route), route
    assert any(len(r) == 3 for r in routes) or len(routes) > 1  # flow-weighted routing spreads


def test_each_runner_is_built_from_the_deployments_settings(deployment: InProcessCluster, cpu_small_placement: Placement) -> None:
    for node, (start, end) in cpu_small_placement.ranges.items():
        spec = deployment.runner(node).spec  # what `assign` carried, as the worker read it
        assert (spec.start_layer, spec.end_layer, spec.max_seq_len) == (start, end, serve_cluster.MAX_SEQ_LEN)
        assert spec.layer_loop == "scan" and spec.weights == "random:0"


def test_a_bad_layer_loop_is_one_clear_error_before_anything_starts(deployment: InProcessCluster) -> None:
    with pytest.raises(ConfigError, match=r"^--layer-loop must be auto, scan or unroll, got 'loop'$"):
        dataclasses.replace(deployment.config, layer_loop="loop")


def test_a_flow_edge_no_hand_off_allows_is_one_clear_error_before_anything_starts(deployment: InProcessCluster) -> None:
    """cpu-0 widened to [0,8) ends at the last layer, so its flow to cpu-1 [4,8) is no hand-off:
    the config is refused, instead of a coordinator that refuses every worker's `ready`."""
    placement = deployment.config.placement
    wide = dataclasses.replace(placement, ranges={**placement.ranges, "cpu-0": (0, 8)})
    with pytest.raises(PlacementError, match=r"^placement of 'cpu-small': flow edge cpu-0 -> cpu-1 is not a valid hand-off under"):
        dataclasses.replace(deployment.config, placement=wide)


def test_max_batch_caps_the_decode_rows_of_every_step(deployment: InProcessCluster) -> None:
    """`--max-batch 2` on its own cluster (KV for eight whole sequences per worker): twelve
    concurrent streams stay exact, and no step of any worker decodes more than two rows
    (without the cap, some step of this burst decodes 7 or 8)."""
    with pytest.raises(ConfigError, match=r"^--max-batch must be at least 1, got 0$"):
        dataclasses.replace(deployment.config, max_batch=0)
    cfg = dataclasses.replace(deployment.config, max_batch=2, kv_tokens=8 * serve_cluster.MAX_SEQ_LEN)
    with InProcessCluster(cfg, serve_cluster.TOKENIZER) as capped:
        capped.wait_ready()
        with Client(capped.client_endpoint, timeout_s=60) as c, ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda i: c.generate(PROMPTS[i % 4], max_tokens=8 + i % 3), range(12)))
        for i, res in enumerate(results):
            assert list(res.ids) == expected(capped, PROMPTS[i % 4], 8 + i % 3)
        for node in cfg.placement.ranges:
            runner = capped.runner(node)
            assert runner.spec.decode_buckets[-1] == 2 and 1 <= runner.most_decode_rows <= 2, (node, runner.most_decode_rows)


def test_a_batch_reaches_the_next_stage_whole(deployment: InProcessCluster) -> None:
    """A step's outputs travel to the next hop as one bundle, and the tokens sampled together
    re-enter the first stage as one: on a 2-stage chain (KV for eight sequences per worker),
    every decode batch of cpu-0 is part of a single batch of cpu-1, and the next tokens of every
    batch of cpu-1 part of a single batch of cpu-0. (Sent one message at a time, a stage that
    woke on the first message ran the few that had arrived, and a burst of 16 streams on the
    shipped deployment moved in steps of 2-3 rows.)"""
    with InProcessCluster(_chain(deployment, gather_ms=0.0), serve_cluster.TOKENIZER) as cluster:
        cluster.wait_ready()
        with Client(cluster.client_endpoint, timeout_s=60) as c, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: c.generate(PROMPTS[i % 4], max_tokens=10), range(8)))
        for i, res in enumerate(results):
            assert list(res.ids) == expected(cluster, PROMPTS[i % 4], 10)
        first, last = cluster.runner("cpu-0").decode_batches, cluster.runner("cpu-1").decode_batches

        def whole(batch: frozenset, batches: list[frozenset]) -> bool:
            return any(batch <= other for other in batches)

        assert all(whole(batch, last) for batch in first if batch)
        entered = frozenset().union(*first)  # (request, position) of every decode row cpu-0 ran
        assert all(whole(later, first) for batch in last if (later := frozenset((r, p + 1) for r, p in batch) & entered))
        assert max(map(len, first)) > 1  # the check has batches to look at


def _chain(deployment: InProcessCluster, **changes) -> ServeConfig:
    """The module's deployment on a 2-stage chain cpu-0 [0,4) -> cpu-1 [4,8), KV for eight sequences per worker."""
    flows = (FlowEdge("coordinator", "cpu-0", 100), FlowEdge("cpu-0", "cpu-1", 100), FlowEdge("cpu-1", "coordinator", 100))
    chain = Placement("cpu-small", 8, {"cpu-0": (0, 4), "cpu-1": (4, 8)}, flows)
    return dataclasses.replace(deployment.config, placement=chain, kv_tokens=8 * serve_cluster.MAX_SEQ_LEN, **changes)


def test_entry_gathering_moves_the_decoding_requests_as_one_batch(deployment: InProcessCluster) -> None:
    """`--gather-ms`: once the last prompt has entered, every decode batch of the entry stage
    holds every request still decoding (their tokens come back at different times; the stage
    waits for the ones still downstream), and the streams stay exact. (Off, the requests often
    keep moving in the groups their prompts arrived in: 3 runs of 6 split a batch.)"""
    chain = _chain(deployment)
    assert chain.entry_gather_s == 0.25  # the default: every node on one host (loopback or no host given)
    nodes = tuple(dataclasses.replace(n, host=f"10.0.0.{i}") for i, n in enumerate(chain.topology.nodes))
    assert dataclasses.replace(chain, topology=dataclasses.replace(chain.topology, nodes=nodes)).entry_gather_s == 0.0
    emulated = dataclasses.replace(chain, emulation=EmulationSpec(10.0, {}, "."))
    assert emulated.entry_gather_s == 0.0 and dataclasses.replace(emulated, gather_ms=40.0).entry_gather_s == 0.04
    with pytest.raises(ConfigError, match=r"^--gather-ms must be in \[0, 60000\], got -1.0$"):
        _chain(deployment, gather_ms=-1.0)
    with InProcessCluster(_chain(deployment, gather_ms=5000.0), serve_cluster.TOKENIZER) as cluster:
        cluster.wait_ready()
        with Client(cluster.client_endpoint, timeout_s=60) as c, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: c.generate([7 + i, 11], max_tokens=12, ignore_eos=True), range(8)))
        for i, res in enumerate(results):
            assert list(res.ids) == fake_generation([7 + i, 11], 12, serve_cluster.TOPOLOGY.model.vocab_size)
        runner = cluster.runner("cpu-0")
        batches = [{rid for rid, _ in batch} for batch in runner.decode_batches]
        first = {rid: min(i for i, b in enumerate(batches) if rid in b) for rid in set().union(*batches)}
        last = {rid: max(i for i, b in enumerate(batches) if rid in b) for rid in first}
        split = [
            i
            for i, batch in enumerate(batches)
            if i > runner.prompt_batches[-1] and any(first[r] < i < last[r] and r not in batch for r in first)
        ]
        assert split == [], (split, runner.prompt_batches)


def test_a_full_batch_does_not_wait_for_the_requests_still_downstream(deployment: InProcessCluster) -> None:
    """Entry gathering with `--max-batch 2` and four streams: once every first token is out,
    cpu-1 hangs (frozen); the entry stage still runs the two rows that wait for it while the
    other two are held below, since they fill a batch, instead of waiting (a minute here) for
    them: two micro-batches are in flight, which is what `--max-batch` is for. Then all is exact."""
    with InProcessCluster(_chain(deployment, gather_ms=60_000.0, max_batch=2), serve_cluster.TOKENIZER) as cluster:
        cluster.wait_ready()
        entry, below = cluster.runner("cpu-0"), cluster.runner("cpu-1")
        below.freeze_after(requests_sampled=4)
        with Client(cluster.client_endpoint, timeout_s=120) as c, ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.generate, [7 + i, 11], max_tokens=8, ignore_eos=True) for i in range(4)]
            try:
                cluster.wait_until(
                    lambda: below.frozen and sum(map(len, entry.decode_batches)) - sum(map(len, below.decode_batches)) == 4,
                    "both micro-batches past cpu-0 while cpu-1 holds one",
                )
                assert entry.most_decode_rows == 2
            finally:
                below.thaw()
            results = [f.result() for f in futures]
        for i, res in enumerate(results):
            assert list(res.ids) == fake_generation([7 + i, 11], 8, serve_cluster.TOPOLOGY.model.vocab_size)


def test_ignore_eos_runs_to_max_tokens(client: Client, deployment: InProcessCluster) -> None:
    """A prompt whose greedy stream ends at a stop id runs on to max_tokens with `ignore_eos`,
    and its tokens are the stream's with no stop ids (the coordinator keeps the rest as is)."""
    assert deployment.coordinator is not None
    stop_ids, vocab = deployment.coordinator.stop_ids, serve_cluster.TOPOLOGY.model.vocab_size
    prompt = next([t] for t in range(1, vocab) if len(expected(deployment, [t], 12)) < 6)  # a stop id within 5 tokens
    short = client.generate(prompt, max_tokens=12)
    assert short.finish_reason == "eos" and short.ids[-1] in stop_ids
    full = client.generate(prompt, max_tokens=12, ignore_eos=True)
    assert full.finish_reason == "length" and list(full.ids) == fake_generation(prompt, 12, vocab)
    assert list(full.ids[: len(short.ids)]) == list(short.ids)


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
