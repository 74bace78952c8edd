"""Worker failures, exact and event-driven: the real coordinator, workers, wire and scheduler
as threads (helix_jax.testing.InProcessCluster, FakeRunners, so every stream is known:
`fake_generation`), tests/conftest.py's placement (cpu-0 and cpu-2 enter, cpu-1 is the only
exit).

1. A worker that hangs (its runner frozen mid-batch: no heartbeats) is taken out of service
   after the heartbeat timeout, the flows are recomputed over the survivors, and the requests
   routed through it resume on the surviving route with exactly the tokens an undisturbed run
   gives; once it speaks again it is told to shut down and changes nothing.
2. A fresh worker for the node rejoins, and requests flow through it again.
3. The exit worker dies with requests in flight: each gets one clear error, and so does every
   later request.
4. A fresh exit worker rejoins; its upstream neighbours reconnect to it (`peer`) and the
   deployment serves again.
Real processes: the deployment restarting a SIGKILLed worker within its budget is the last test
of tests/test_serve_security.py, on its CURVE deployment (one real deployment for both).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import pytest

from helix_jax.client import Client
from helix_jax.errors import ConfigError, RequestError
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.solver.maxflow import survivor_flows
from helix_jax.testing import InProcessCluster, fake_generation, wait_until
from helix_jax.topology import load_topology, tiny_topology_path

HEARTBEAT_TIMEOUT_S = 5.0  # the hung worker is found after this; the others heartbeat every 1 s, even on a loaded machine
PROMPTS = ["Hello, helix!", "max-flow", "A100 + T4 + L4", "x", "failover", "resume me"]
TOPOLOGY = load_topology(tiny_topology_path())
TOKENIZER = load_tokenizer(TOPOLOGY.model)


@pytest.fixture(scope="module")
def deployment(cpu_small_placement: Placement):
    cfg = ServeConfig(
        TOPOLOGY,
        cpu_small_placement,
        TOPOLOGY.model,
        weights="random:0",
        max_seq_len=128,
        kv_tokens=16 * 128,
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        flow_planner=functools.partial(survivor_flows, TOPOLOGY, cpu_small_placement),
    )
    with InProcessCluster(cfg, TOKENIZER) as cluster:
        yield cluster.wait_ready()


def _ids(text: str) -> list[int]:
    return TOKENIZER.encode(text)


def expected(prompt: str, max_tokens: int, sampling: SamplingParams | None = None) -> list[int]:
    stop = frozenset({TOPOLOGY.model.eos_token_id}) - {None}
    return fake_generation(_ids(prompt), max_tokens, TOPOLOGY.model.vocab_size, sampling, stop)


def _run_all(endpoint: str, jobs: list[tuple[str, int, SamplingParams | None]]) -> list:
    def one(job):
        prompt, max_tokens, sampling = job
        extra = (
            {}
            if sampling is None
            else dict(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, seed=sampling.seed)
        )
        with Client(endpoint, timeout_s=60) as client:
            try:
                return client.generate(prompt, max_tokens=max_tokens, **extra)
            except RequestError as exc:
                return exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


def test_hung_worker_is_replaced_and_its_requests_resume_exactly(deployment: InProcessCluster) -> None:
    coord = deployment.coordinator
    assert coord is not None
    sampling = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=11)
    jobs = [(p, 12, sampling if i % 2 else None) for i, p in enumerate(PROMPTS)]
    hung = deployment.worker("cpu-2")
    deployment.runner("cpu-2").freeze()  # its first batch hangs: no more heartbeats
    try:
        results = _run_all(deployment.client_endpoint, jobs)
    finally:
        deployment.runner("cpu-2").thaw()
    stats = coord.stats()
    assert list(stats["down_nodes"]) == ["cpu-2"] and "no heartbeat" in stats["down_nodes"]["cpu-2"]
    assert stats["resumed"] >= 1  # the round robin had sent some requests through cpu-2
    # flows recomputed over cpu-0 -> cpu-1: nothing enters or leaves cpu-2 any more
    graph = coord.scheduler.graph
    assert stats["flow_tokens_per_s"] > 0 and graph.weight("coordinator", "cpu-0") == pytest.approx(stats["flow_tokens_per_s"])
    assert graph.weight("coordinator", "cpu-2") == 0 and graph.weight("cpu-2", "cpu-1") == 0
    for (prompt, max_tokens, params), res in zip(jobs, results):
        assert not isinstance(res, Exception), res
        assert list(res.ids) == expected(prompt, max_tokens, params), prompt
        assert [hop[0] for hop in res.route] == ["cpu-0", "cpu-1"]
    # thawed, it heartbeats again and is told to shut down; its stale output is ignored
    hung.thread.join(timeout=30)
    assert hung.exit_code == 0
    again = _run_all(deployment.client_endpoint, [(p, 6, None) for p in PROMPTS[:3]])
    for prompt, res in zip(PROMPTS, again):
        assert list(res.ids) == expected(prompt, 6)
        assert "cpu-2" not in [hop[0] for hop in res.route]
    assert coord.stats()["in_flight"] == 0 and coord.scheduler.ledger.used("cpu-0") == 0


def _rejoin(deployment: InProcessCluster, node: str) -> None:
    coord = deployment.coordinator
    assert coord is not None
    deployment.start_worker(node)
    deployment.wait_until(lambda: node not in coord.stats()["down_nodes"], f"{node} back in service")


def test_a_fresh_worker_rejoins(deployment: InProcessCluster) -> None:
    coord = deployment.coordinator
    assert coord is not None
    _rejoin(deployment, "cpu-2")
    stats = coord.stats()
    assert stats["down_nodes"] == {} and stats["rejoined"] == 1
    assert coord.scheduler.graph.weight("coordinator", "cpu-2") > 0  # flows include it again
    results = _run_all(deployment.client_endpoint, [(p, 6, None) for p in PROMPTS])
    for prompt, res in zip(PROMPTS, results):
        assert list(res.ids) == expected(prompt, 6)
    assert any(res.route[0][0] == "cpu-2" for res in results)


def test_losing_the_only_exit_fails_requests_with_one_clear_error(deployment: InProcessCluster) -> None:
    coord = deployment.coordinator
    assert coord is not None
    deployment.runner("cpu-1").freeze()  # requests pile up in cpu-1 ...
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_run_all, deployment.client_endpoint, [(p, 8, None)]) for p in PROMPTS[:3]]
        deployment.wait_until(lambda: coord.stats()["in_flight"] == 3, "3 requests in flight")
        deployment.kill("cpu-1")  # ... and then its worker dies
        results = [f.result()[0] for f in futures]
    reason = coord.stats()["down_nodes"]["cpu-1"]
    assert coord.stats()["flow_tokens_per_s"] == 0  # no route is left
    assert "worker thread exited" in reason
    for res in results:
        assert isinstance(res, RequestError), res
        assert "cpu-1" in str(res) and "out of service" in str(res)
    late = _run_all(deployment.client_endpoint, [("too late", 4, None)])[0]
    assert isinstance(late, RequestError) and "out of service" in str(late)
    assert coord.stats()["in_flight"] == 0 and coord.stats()["queued"] == 0


def test_heartbeat_timeout_must_be_positive() -> None:
    from helix_jax.cli.serve_cmds import serve_config

    with pytest.raises(ConfigError, match="--heartbeat-timeout must be positive"):
        serve_config(None, None, None, False, 1.0, "127.0.0.1", 0, None, 128, 1.0, heartbeat_timeout_s=0.0)


def test_a_fresh_exit_worker_brings_the_deployment_back(deployment: InProcessCluster) -> None:
    coord = deployment.coordinator
    assert coord is not None
    _rejoin(deployment, "cpu-1")
    assert coord.stats()["rejoined"] == 2 and coord.stats()["flow_tokens_per_s"] > 0
    # both entries hand off to the new cpu-1 at its new data endpoint
    results = _run_all(deployment.client_endpoint, [(p, 6, None) for p in PROMPTS])
    for prompt, res in zip(PROMPTS, results):
        assert list(res.ids) == expected(prompt, 6)
        assert res.route[-1][0] == "cpu-1"
    assert {res.route[0][0] for res in results} == {"cpu-0", "cpu-2"}


def test_a_coordinator_busy_past_the_timeout_takes_out_no_healthy_worker(cpu_small_placement: Placement) -> None:
    """A re-plan that keeps the coordinator's loop busy for longer than the heartbeat timeout
    (a solver on a loaded machine) must not take out the workers whose heartbeats waited in its
    socket meanwhile. The re-plan here returns only after cpu-0 and cpu-1 have each sent four
    more heartbeats (over 3 s of their 1 s period, against a 2.5 s timeout): counted, not slept."""
    plan = functools.partial(survivor_flows, TOPOLOGY, cpu_small_placement)
    cluster: list[InProcessCluster] = []

    def slow_plan(down: frozenset[str]) -> Placement:
        live = [cluster[0].worker(n).worker for n in ("cpu-0", "cpu-1")]
        marks = [w.heartbeats_sent for w in live]
        wait_until(lambda: all(w.heartbeats_sent >= m + 4 for w, m in zip(live, marks)), "4 heartbeats of cpu-0 and cpu-1")
        return plan(down)

    cfg = ServeConfig(
        TOPOLOGY,
        cpu_small_placement,
        TOPOLOGY.model,
        weights="random:0",
        max_seq_len=128,
        kv_tokens=16 * 128,
        heartbeat_timeout_s=2.5,
        flow_planner=slow_plan,
    )
    with InProcessCluster(cfg, TOKENIZER) as dep:
        cluster.append(dep.wait_ready())
        coord = dep.coordinator
        assert coord is not None
        dep.kill("cpu-2")  # reported like a process exit: out of service, then the slow re-plan
        dep.wait_until(lambda: "cpu-2" in coord.stats()["down_nodes"], "cpu-2 out of service")
        results = _run_all(dep.client_endpoint, [(p, 4, None) for p in PROMPTS[:2]])  # loop turns after the re-plan
        for prompt, res in zip(PROMPTS, results):
            assert not isinstance(res, Exception), res
            assert list(res.ids) == expected(prompt, 4)
        assert list(coord.stats()["down_nodes"]) == ["cpu-2"]
