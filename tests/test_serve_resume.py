"""The resume grace: a request moved off a lost route either resumes within
`ServeConfig.resume_grace_s` or fails with one error naming the lost node; it never waits for
a restart. Exact and event-driven: the in-process cluster (FakeRunners), the coordinator's
resume deadlines on an injected clock (`coord.health.clock`), runners frozen instead of slept on.

The placement has two routes: cpu-0 holds the whole model [0, 8); cpu-1 [0, 4) -> cpu-2 [4, 8)
is the other. Each node's KV holds exactly one request (128 tokens of a 128-token context), so
with both routes busy a request moved off cpu-2 finds no room on cpu-0 until it finishes.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from helix_jax.client import Client
from helix_jax.errors import ConfigError, RequestError
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import FlowEdge, Placement
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.solver.maxflow import survivor_flows
from helix_jax.testing import InProcessCluster, fake_generation
from helix_jax.topology import load_topology, tiny_topology_path

TOPOLOGY = load_topology(tiny_topology_path())
TOKENIZER = load_tokenizer(TOPOLOGY.model)
GRACE_S = 3.0
PROMPTS = ([70, 71, 72], [80, 81, 82])
MAX_TOKENS = 125  # prompt + output = 128 = a node's whole KV


def two_routes() -> Placement:
    flows = (
        FlowEdge("coordinator", "cpu-0", 100),
        FlowEdge("cpu-0", "coordinator", 100),
        FlowEdge("coordinator", "cpu-1", 100),
        FlowEdge("cpu-1", "cpu-2", 100),
        FlowEdge("cpu-2", "coordinator", 100),
    )
    return Placement("cpu-small", 8, {"cpu-0": (0, 8), "cpu-1": (0, 4), "cpu-2": (4, 8)}, flows)


@pytest.fixture()
def cluster():
    placement = two_routes()
    cfg = ServeConfig(
        TOPOLOGY,
        placement,
        TOPOLOGY.model,
        weights="random:0",
        max_seq_len=128,
        kv_tokens=128,
        heartbeat_timeout_s=600.0,  # frozen runners send no heartbeats; kills are reported
        resume_grace_s=GRACE_S,
        flow_planner=functools.partial(survivor_flows, TOPOLOGY, placement),
    )
    with InProcessCluster(cfg, TOKENIZER) as c:
        yield c.wait_ready()


def expected(prompt: list[int]) -> list[int]:
    stop = frozenset({TOPOLOGY.model.eos_token_id}) - {None}
    return fake_generation(prompt, MAX_TOKENS, TOPOLOGY.model.vocab_size, None, stop)


def both_routes_busy(cluster: InProcessCluster, client: Client, pool: ThreadPoolExecutor) -> list[Future]:
    """One request on each route, every exit frozen, so neither can finish."""
    coord = cluster.coordinator
    assert coord is not None
    for node in ("cpu-0", "cpu-2"):
        cluster.runner(node).freeze()
    futures = []
    for n, prompt in enumerate(PROMPTS, start=1):
        futures.append(pool.submit(lambda p=prompt: list(client.generate(p, max_tokens=MAX_TOKENS).ids)))
        cluster.wait_until(lambda n=n: coord.stats()["in_flight"] == n, f"{n} request(s) admitted")
    return futures


def outcomes(futures: list[Future]) -> list[object]:
    out: list[object] = []
    for f in futures:
        try:
            out.append(f.result(timeout=60))
        except RequestError as exc:
            out.append(exc)
    return out


def test_a_request_no_surviving_route_takes_fails_after_the_grace_naming_the_node(cluster) -> None:
    coord = cluster.coordinator
    now = [0.0]
    coord.health.clock = lambda: now[0]
    with Client(cluster.client_endpoint, timeout_s=60) as client, ThreadPoolExecutor(2) as pool:
        futures = both_routes_busy(cluster, client, pool)
        cluster.kill("cpu-2")  # its request moves to the queue's head; cpu-0 is full
        cluster.wait_until(lambda: coord.stats()["resumed"] == 1 and coord.stats()["queued"] == 1, "the move")
        assert coord.serving_stats()["health"]["resuming"] == 1
        now[0] = GRACE_S - 0.01
        assert not any(f.done() for f in futures)  # within the grace: still waiting
        now[0] = GRACE_S
        cluster.wait_until(lambda: any(f.done() for f in futures), "the resume deadline")
        cluster.runner("cpu-0").thaw()
        results = outcomes(futures)
    errors = [r for r in results if isinstance(r, RequestError)]
    assert len(errors) == 1, results
    message = str(errors[0])
    assert "cpu-2 (worker thread" in message and "within the 3 s resume grace (--resume-grace-s)" in message
    ((prompt, done),) = [(p, r) for p, r in zip(PROMPTS, results) if not isinstance(r, RequestError)]
    assert done == expected(prompt)  # the request on the surviving route is untouched
    health = coord.serving_stats()["health"]
    assert health["failed"]["resume_timeout"] == 1 and health["resuming"] == 0
    assert coord.stats()["in_flight"] == 0 and coord.stats()["queued"] == 0


def test_a_request_a_route_takes_within_the_grace_resumes_exactly(cluster) -> None:
    """cpu-2 comes back (a fresh worker rejoins) before the deadline: the moved request resumes
    on cpu-1 -> cpu-2 and finishes with the tokens of an undisturbed run; the deadline passing
    later changes nothing."""
    coord = cluster.coordinator
    now = [0.0]
    coord.health.clock = lambda: now[0]
    with Client(cluster.client_endpoint, timeout_s=60) as client, ThreadPoolExecutor(2) as pool:
        futures = both_routes_busy(cluster, client, pool)
        cluster.kill("cpu-2")
        cluster.wait_until(lambda: coord.stats()["queued"] == 1, "the move")
        cluster.start_worker("cpu-2")
        cluster.wait_until(lambda: any(f.done() for f in futures), "the moved request to finish on cpu-1 -> cpu-2")
        now[0] = 10 * GRACE_S
        cluster.runner("cpu-0").thaw()
        results = outcomes(futures)
    assert results == [expected(p) for p in PROMPTS]
    health = coord.serving_stats()["health"]
    assert health["failed"]["resume_timeout"] == 0 and health["rejoins"]["cpu-2"] == 1
    assert coord.stats()["resumed"] == 1


def test_the_grace_must_be_a_finite_non_negative_number() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--resume-grace-s must be >= 0 and finite"):
            ServeConfig(TOPOLOGY, two_routes(), TOPOLOGY.model, resume_grace_s=bad)
