"""Worker failures in a real deployment (coordinator thread + 3 worker processes over ZeroMQ,
the shipped small CPU topology, tests/conftest.py's placement: cpu-0 and cpu-2 enter, cpu-1
is the only exit).

1. A worker that falls silent (SIGSTOP) is taken out of service after the heartbeat timeout,
   the flows are recomputed over the survivors, and the requests routed through it resume on
   the surviving route and finish with exactly the tokens an undisturbed run gives; the
   revived worker (SIGCONT) changes nothing.
2. The old worker is told to shut down; a fresh worker for the node rejoins, and requests
   flow through it again.
3. The exit worker's process dies (SIGKILL): the deployment sees the exit, the requests in
   flight get one clear error each, and so does every later request.
4. A fresh exit worker rejoins; its upstream neighbours reconnect to it (`peer`) and the
   deployment serves again.
5. With `restart_workers`, the deployment itself restarts a crashed worker (within its budget).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helix_jax.client import Client
from helix_jax.errors import ConfigError, RequestError
from helix_jax.model import SamplingParams
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.runtime.deploy import LocalDeployment, WorkerProcess, worker_command
from helix_jax.solver.maxflow import survivor_flows
from helix_jax.topology import load_topology, tiny_topology_path

HEARTBEAT_TIMEOUT_S = 5.0
PROMPTS = ["Hello, helix!", "max-flow", "A100 + T4 + L4", "x", "failover", "resume me"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, cpu_small_placement: Placement):
    topo = load_topology(tiny_topology_path())
    cfg = ServeConfig(topo, cpu_small_placement, topo.model, weights="random:0", max_seq_len=128,
                      kv_tokens=16 * 128, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
                      flow_planner=functools.partial(survivor_flows, topo, cpu_small_placement))
    dep = LocalDeployment(cfg, load_tokenizer(topo.model), log_dir=tmp_path_factory.mktemp("workers"))
    with dep:
        dep.wait_ready(timeout_s=400)
        yield dep


def _pid(dep: LocalDeployment, node: str) -> int:
    """The node's newest worker process."""
    return [w.process.pid for w in dep.workers if w.node == node][-1]


def _ids(text: str) -> list[int]:
    return load_tokenizer(load_topology(tiny_topology_path()).model).encode(text)


def _run_all(endpoint: str, jobs: list[tuple[str, int, SamplingParams | None]]) -> list:
    def one(job):
        prompt, max_tokens, sampling = job
        extra = {} if sampling is None else dict(temperature=sampling.temperature, top_k=sampling.top_k,
                                                 top_p=sampling.top_p, seed=sampling.seed)
        with Client(endpoint, timeout_s=120) as client:
            try:
                return client.generate(prompt, max_tokens=max_tokens, **extra)
            except RequestError as exc:
                return exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


def test_silent_worker_is_replaced_and_its_requests_resume_exactly(deployment: LocalDeployment,
                                                                   reference) -> None:
    coord = deployment.coordinator
    assert coord is not None
    sampling = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=11)
    jobs = [(p, 12, sampling if i % 2 else None) for i, p in enumerate(PROMPTS)]
    os.kill(_pid(deployment, "cpu-2"), signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = _run_all(deployment.client_endpoint, jobs)
        waited = time.monotonic() - started
    finally:
        os.kill(_pid(deployment, "cpu-2"), signal.SIGCONT)
    stats = coord.stats()
    assert list(stats["down_nodes"]) == ["cpu-2"] and "no heartbeat" in stats["down_nodes"]["cpu-2"]
    assert stats["resumed"] >= 1  # the round robin had sent some requests through cpu-2
    # flows recomputed over cpu-0 -> cpu-1: nothing enters or leaves cpu-2 any more
    graph = coord.scheduler.graph
    assert stats["flow_tokens_per_s"] > 0 and graph.weight("coordinator", "cpu-0") == pytest.approx(
        stats["flow_tokens_per_s"])
    assert graph.weight("coordinator", "cpu-2") == 0 and graph.weight("cpu-2", "cpu-1") == 0
    assert waited >= HEARTBEAT_TIMEOUT_S - 1.0  # they waited for the timeout, then moved on
    for (prompt, max_tokens, params), res in zip(jobs, results):
        assert not isinstance(res, Exception), res
        assert list(res.ids) == reference(_ids(prompt), max_tokens, params), prompt
        assert [hop[0] for hop in res.route] == ["cpu-0", "cpu-1"]
    # the revived worker stays out of service and its stale output is ignored
    time.sleep(1.5)
    again = _run_all(deployment.client_endpoint, [(p, 6, None) for p in PROMPTS[:3]])
    for prompt, res in zip(PROMPTS, again):
        assert list(res.ids) == reference(_ids(prompt), 6)
        assert "cpu-2" not in [hop[0] for hop in res.route]
    assert coord.stats()["in_flight"] == 0 and coord.scheduler.ledger.used("cpu-0") == 0


def _start_replacement(dep: LocalDeployment, node: str, log_dir) -> tuple[subprocess.Popen, object]:
    """A fresh `helix-jax worker` for `node`, as an operator would start it; close() stops it."""
    assert dep.coordinator is not None
    log_path = log_dir / f"{node}-replacement.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(worker_command(dep.coordinator.control_endpoint, node, os.getpid()),
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})
    dep.workers.append(WorkerProcess(node, proc, log_path))
    return proc, log_path


def _wait_rejoined(dep: LocalDeployment, node: str, proc: subprocess.Popen, log_path) -> None:
    assert dep.coordinator is not None
    deadline = time.monotonic() + 300
    while node in dep.coordinator.stats()["down_nodes"] and time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.2)
    assert node not in dep.coordinator.stats()["down_nodes"]


def test_old_worker_is_sent_away_and_a_fresh_one_rejoins(deployment: LocalDeployment, reference,
                                                          tmp_path) -> None:
    coord = deployment.coordinator
    assert coord is not None
    old = next(w.process for w in deployment.workers if w.node == "cpu-2")
    assert old.wait(timeout=30) == 0  # its heartbeats after SIGCONT were answered with shutdown
    proc, log_path = _start_replacement(deployment, "cpu-2", tmp_path)
    _wait_rejoined(deployment, "cpu-2", proc, log_path)
    stats = coord.stats()
    assert stats["down_nodes"] == {} and stats["rejoined"] == 1
    assert coord.scheduler.graph.weight("coordinator", "cpu-2") > 0  # flows include it again
    results = _run_all(deployment.client_endpoint, [(p, 6, None) for p in PROMPTS])
    for prompt, res in zip(PROMPTS, results):
        assert list(res.ids) == reference(_ids(prompt), 6)
    assert any(res.route[0][0] == "cpu-2" for res in results)


def test_losing_the_only_exit_fails_requests_with_one_clear_error(deployment: LocalDeployment) -> None:
    coord = deployment.coordinator
    assert coord is not None
    exit_pid = _pid(deployment, "cpu-1")
    os.kill(exit_pid, signal.SIGSTOP)  # requests pile up in cpu-1 ...
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_run_all, deployment.client_endpoint, [(p, 8, None)]) for p in PROMPTS[:3]]
        deadline = time.monotonic() + 5
        while coord.stats()["in_flight"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert coord.stats()["in_flight"] == 3
        os.kill(exit_pid, signal.SIGKILL)  # ... and then its process dies
        results = [f.result()[0] for f in futures]
    reason = coord.stats()["down_nodes"]["cpu-1"]
    assert coord.stats()["flow_tokens_per_s"] == 0  # no route is left
    assert "exited with code -9" in reason
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


def test_a_fresh_exit_worker_brings_the_deployment_back(deployment: LocalDeployment, reference,
                                                        tmp_path) -> None:
    coord = deployment.coordinator
    assert coord is not None
    proc, log_path = _start_replacement(deployment, "cpu-1", tmp_path)
    _wait_rejoined(deployment, "cpu-1", proc, log_path)
    assert coord.stats()["rejoined"] == 2 and coord.stats()["flow_tokens_per_s"] > 0
    # both entries hand off to the new cpu-1 at its new data endpoint
    results = _run_all(deployment.client_endpoint, [(p, 6, None) for p in PROMPTS])
    for prompt, res in zip(PROMPTS, results):
        assert list(res.ids) == reference(_ids(prompt), 6)
        assert res.route[-1][0] == "cpu-1"
    assert {res.route[0][0] for res in results} == {"cpu-0", "cpu-2"}


def test_deployment_restarts_a_crashed_worker(tmp_path, cpu_small_placement: Placement, reference) -> None:
    topo = load_topology(tiny_topology_path())
    cfg = ServeConfig(topo, cpu_small_placement, topo.model, weights="random:0", max_seq_len=128,
                      kv_tokens=16 * 128, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
                      flow_planner=functools.partial(survivor_flows, topo, cpu_small_placement))
    with LocalDeployment(cfg, load_tokenizer(topo.model), log_dir=tmp_path, restart_workers=True,
                         max_restarts=1) as dep:
        dep.wait_ready(timeout_s=400)
        coord = dep.coordinator
        assert coord is not None
        os.kill(_pid(dep, "cpu-2"), signal.SIGKILL)
        deadline = time.monotonic() + 300
        while coord.stats()["rejoined"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert coord.stats()["rejoined"] == 1 and coord.stats()["down_nodes"] == {}
        assert dep.restarts == {"cpu-2": 1} and (tmp_path / "cpu-2.restart1.log").exists()
        results = _run_all(dep.client_endpoint, [(p, 6, None) for p in PROMPTS])
        for prompt, res in zip(PROMPTS, results):
            assert list(res.ids) == reference(_ids(prompt), 6)
        assert any(res.route[0][0] == "cpu-2" for res in results)
        os.kill(_pid(dep, "cpu-2"), signal.SIGKILL)  # the restart budget (1) is spent: stays down
        deadline = time.monotonic() + 10
        while "cpu-2" not in coord.stats()["down_nodes"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert "cpu-2" in coord.stats()["down_nodes"] and len([w for w in dep.workers if w.node == "cpu-2"]) == 2
