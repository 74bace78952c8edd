"""CURVE on every socket of a real deployment (coordinator thread + 3 worker processes, tiny-8,
tests/conftest.py's placement: cpu-0 [0,6) and cpu-2 [0,4) enter, cpu-2 hands off to cpu-0 or
cpu-1, cpu-1 [4,8) is the only exit).

Evidence of "no answer" is a poll with a bounded timeout; evidence that a forged message was
dropped is a request in flight that still streams exactly the local model's tokens, every
worker still alive, and the worker's log naming the drop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zmq
from cli_run import run_cli

from helix_jax.client import AsyncClient, Client
from helix_jax.errors import ConfigError
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime import security, wire
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.runtime.deploy import LocalDeployment
from helix_jax.testing import wait_until
from helix_jax.topology import load_topology, tiny_topology_path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, COLUMNS="250", JAX_PLATFORMS="cpu")
SAMPLING = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
NO_ANSWER_MS = 2000


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, cpu_small_placement: Placement):
    topo = load_topology(tiny_topology_path())
    keys = security.DeploymentKeys.generate(cpu_small_placement.ranges)
    # the KV budget and --max-seq-len of the deploy CLI's tests (tests/test_deploy_cli.py): its
    # planned placement holds [0,4) and [4,8) too, so cpu-1's and cpu-2's programs come from the
    # run's compile cache and only cpu-0 [0,6) compiles its own
    cfg = ServeConfig(topo, cpu_small_placement, topo.model, weights="random:0", max_seq_len=256, keys=keys)
    state = tmp_path_factory.mktemp("state")
    # restarts on (one per node): the last test kills a worker (the failover smoke test on real processes)
    with LocalDeployment(
        cfg, load_tokenizer(topo.model), log_dir=state / "logs", state_dir=state, restart_workers=True, max_restarts=1
    ) as dep:
        dep.wait_ready(timeout_s=400)
        yield dep


def _socket(kind: int, endpoint: str, own: security.Keypair | None = None, server: str | None = None) -> zmq.Socket:
    sock = wire.configure(zmq.Context.instance().socket(kind))
    if own is not None:
        security.curve_client(sock, own, server or "")
    sock.connect(endpoint)
    return sock


def test_connection_file_is_private_and_everything_works(deployment: LocalDeployment, reference) -> None:
    path = deployment.connection_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for node in deployment.config.placement.ranges:
        assert stat.S_IMODE(deployment.keys_file(node).stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["endpoint"] == deployment.client_endpoint and data["transport"] == "curve"
    with Client.from_connection_file(path, timeout_s=120) as client:
        assert list(client.generate([256, 72, 105], max_tokens=6).ids) == reference([256, 72, 105], 6)

    async def main():
        async with AsyncClient.from_connection_file(path, timeout_s=120) as ac:
            return await ac.generate([256, 72], max_tokens=4)

    assert list(asyncio.run(main()).ids) == reference([256, 72], 4)
    from typer.testing import CliRunner

    from helix_jax.cli.main import app

    out = CliRunner().invoke(app, ["generate", "--connection", str(path), "--prompt-ids", "256,72,105", "--max-tokens", "5", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["ids"] == reference([256, 72, 105], 5)


def test_a_raw_client_without_the_client_keys_gets_no_answer(deployment: LocalDeployment) -> None:
    keys = deployment.config.keys
    info = wire.encode(wire.make("info", request_id="probe"))
    for own in (None, security.Keypair.generate(), keys.nodes["cpu-0"]):  # plain, unknown, a worker's key
        sock = _socket(zmq.DEALER, deployment.client_endpoint, own, keys.coordinator.public)
        try:  # without blocking: once the handshake has failed the DEALER has no peer, and a send would wait for one forever
            sock.send_multipart(info, zmq.NOBLOCK)
            assert sock.poll(NO_ANSWER_MS) == 0, own
        except zmq.Again:
            pass  # no peer to send to: refused before a word
        sock.close(0)
    with Client(deployment.client_endpoint, timeout_s=30, keys=keys.client()) as client:  # the right key does
        assert client.info()["model"] == deployment.config.model.name


def _wait_for_log(path: Path, needle: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{needle!r} never appeared in {path}"
        time.sleep(0.1)


def test_no_worker_accepts_a_forged_step_free_assign_or_shutdown(deployment: LocalDeployment, reference) -> None:
    keys, coord = deployment.config.keys, deployment.coordinator
    prompt = [65, 66, 67, 68]
    with Client.from_connection_file(deployment.connection_file, timeout_s=120) as client:
        stream = client.stream(prompt, max_tokens=40)
        tokens = iter(stream)
        first = next(tokens).token_id
        rid = next(r for r, req in list(coord._live.items()) if req.client_request_id == stream.request_id)
        forged = [
            wire.make("free", request_id=rid),
            wire.make(
                "step",
                [np.asarray([5, 6], np.int32)],
                request_id=rid,
                route=[["cpu-0", 0, 6], ["cpu-1", 6, 8]],
                hop=0,
                position=0,
                index=0,
                sampling=SAMPLING,
            ),
            wire.make(
                "assign",
                node="cpu-0",
                start_layer=0,
                end_layer=8,
                model={},
                neighbours={},
                coordinator_data="tcp://127.0.0.1:1",
                max_seq_len=8,
            ),
            wire.make("shutdown"),
        ]
        outsiders = [None, security.Keypair.generate(), keys.clients[0]]
        for node, endpoint in coord.worker_data_endpoints.items():
            for own in outsiders:  # no handshake, unknown key, the client's key
                if own is keys.nodes.get(node):
                    continue
                push = _socket(zmq.PUSH, endpoint, own, keys.nodes[node].public)
                for msg in forged:
                    try:  # once the worker refuses the handshake the pipe is gone: a blocking send would wait forever
                        push.send_multipart(wire.encode(msg), flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                push.close(linger=1000)
        # cpu-2 may hand off to cpu-0, so cpu-0 admits its key: the messages themselves must be refused
        insider = _socket(zmq.PUSH, coord.worker_data_endpoints["cpu-0"], keys.nodes["cpu-2"], keys.nodes["cpu-0"].public)
        for msg in forged:
            insider.send_multipart(wire.encode(msg))
        insider.close(linger=1000)
        # cpu-1 is downstream of cpu-0: a step it claims to hand off is refused too
        rogue = _socket(zmq.PUSH, coord.worker_data_endpoints["cpu-0"], keys.nodes["cpu-1"], keys.nodes["cpu-0"].public)
        rogue.send_multipart(
            wire.encode(
                wire.make(
                    "step",
                    [np.zeros((1, 4), np.float32)],
                    request_id=rid,
                    route=[["cpu-1", 4, 8], ["cpu-0", 0, 6]],
                    hop=1,
                    position=0,
                    index=0,
                    sampling=SAMPLING,
                )
            )
        )
        rogue.close(linger=1000)
        # and a sampled token signed by a node that is not the request's last hop
        fake = _socket(zmq.PUSH, coord.data_endpoint, keys.nodes["cpu-0"], keys.coordinator.public)
        fake.send_multipart(wire.encode(wire.make("sampled", request_id=rid, index=1, token_id=3, node="cpu-1")))
        fake.close(linger=1000)
        rest = [tok.token_id for tok in tokens]
    assert [first, *rest] == reference(prompt, 40)
    assert all(w.process.poll() is None for w in deployment.workers)
    log = deployment.log_dir / "cpu-0.log"
    _wait_for_log(log, f"rejected free: free of {rid} from cpu-2, not the coordinator")
    _wait_for_log(log, f"rejected step: step 0 of {rid} from cpu-2, expected coordinator")
    _wait_for_log(log, f"rejected step: step 1 of {rid} from cpu-1, which does not hand off to cpu-0")
    _wait_for_log(log, "rejected assign: unexpected 'assign' on the data socket")


def test_a_worker_with_a_wrong_key_cannot_register(deployment: LocalDeployment, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="helix_jax.runtime.wire")
    keys = deployment.config.keys
    wrong = security.WorkerKeys("cpu-1", security.Keypair.generate(), keys.coordinator.public).write(tmp_path / "k.json")
    stolen = security.WorkerKeys("cpu-1", keys.nodes["cpu-0"], keys.coordinator.public).write(tmp_path / "s.json")
    before = dict(deployment.coordinator.worker_data_endpoints)
    cmd = [
        sys.executable,
        "-m",
        "helix_jax.cli.main",
        "worker",
        "--coordinator",
        deployment.coordinator.control_endpoint,
        "--node",
        "cpu-1",
    ]
    for extra, needle in (([], "refused the CURVE handshake"), (["--keys", str(wrong)], "refused the CURVE handshake")):
        proc = subprocess.run(cmd + extra, capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode == 1 and needle in proc.stderr, proc.stderr
    # a node's real key used for another node: admitted by ZAP, then its register is dropped
    proc = subprocess.Popen(cmd + ["--keys", str(stolen)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not any("register for node 'cpu-1' signed by the key of 'cpu-0'" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline and proc.poll() is None, "the forged register was not seen"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert deployment.coordinator.worker_data_endpoints == before
    with Client.from_connection_file(deployment.connection_file, timeout_s=120) as client:
        assert len(client.generate("still serving", max_tokens=3).ids) == 3


def test_insecure_on_a_non_loopback_host_is_refused(tmp_path: Path, cpu_small_placement: Placement) -> None:
    topology = json.loads((ROOT / "topologies" / "cpu-tiny.json").read_text())
    topology["nodes"][2]["host"] = "10.0.0.7"
    other = tmp_path / "two-hosts.json"
    other.write_text(json.dumps(topology))
    cases = [
        (["topologies/cpu-tiny.json", "--host", "10.0.0.9"], "not on loopback: --host (10.0.0.9)"),
        ([str(other)], "not on loopback: node cpu-2 (10.0.0.7)"),
    ]
    for args, needle in cases:
        args = [str(ROOT / a) if a.startswith("topologies/") else a for a in args]
        proc = run_cli("deploy", *args, "--insecure", "--http-port", "0", "--state-dir", str(tmp_path / "state"))
        error = proc.stderr.strip()
        assert proc.returncode == 2 and error.startswith("error: validate: --insecure turns CURVE off"), error
        assert needle in error and "\n" not in error, error
    assert not (tmp_path / "state").exists()  # refused before anything was written or started
    from helix_jax.runtime.coordinator import Coordinator

    topo = load_topology(tiny_topology_path())
    with pytest.raises(ConfigError, match=r"not on loopback: the coordinator \(10.0.0.9\)"):
        Coordinator(ServeConfig(topo, cpu_small_placement, topo.model, host="10.0.0.9"), None)
    worker = subprocess.run(
        [sys.executable, "-m", "helix_jax.cli.main", "worker", "--coordinator", "tcp://10.0.0.9:5555", "--node", "cpu-0"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert worker.returncode == 2 and "a worker without --keys (plain TCP)" in worker.stderr, worker.stderr


RESTART_PROMPTS = ["Hello, helix!", "max-flow", "A100 + T4 + L4", "x", "failover", "resume me"]


def _pid(dep: LocalDeployment, node: str) -> int:
    """The node's newest worker process."""
    return [w.process.pid for w in dep.workers if w.node == node][-1]


def test_a_killed_worker_is_restarted_with_its_keys_and_rejoins(deployment: LocalDeployment, reference) -> None:
    """The one failover smoke test on real worker processes (the other failures run in-process:
    tests/test_serve_failures.py), under CURVE, so the restarted worker must come back with its
    node's keys: SIGKILL, restart, rejoin, exact answers through it; a second SIGKILL with the
    restart budget (1) spent leaves the node down. Last in this module: it changes the deployment."""
    coord = deployment.coordinator
    assert coord is not None
    tokenizer = load_tokenizer(deployment.config.model)
    rejoined = coord.stats()["rejoined"]
    os.kill(_pid(deployment, "cpu-2"), signal.SIGKILL)
    wait_until(lambda: coord.stats()["rejoined"] > rejoined, "cpu-2 restarted and rejoined", 300, 0.05)
    assert coord.stats()["rejoined"] == rejoined + 1 and coord.stats()["down_nodes"] == {}
    assert deployment.restarts == {"cpu-2": 1} and (deployment.log_dir / "cpu-2.restart1.log").exists()
    with Client.from_connection_file(deployment.connection_file, timeout_s=120) as client:
        health = client.stats()["health"]  # what /ready and /metrics show
        assert health["restarts"]["cpu-2"] == {"taken": 1, "left": 0} and health["rejoins"]["cpu-2"] == 1
        with ThreadPoolExecutor(len(RESTART_PROMPTS)) as pool:
            results = list(pool.map(lambda p: client.generate(p, max_tokens=6), RESTART_PROMPTS))
    for prompt, res in zip(RESTART_PROMPTS, results):
        assert list(res.ids) == reference(tokenizer.encode(prompt), 6)  # the real (tiny, seeded) model's tokens
    assert any(res.route[0][0] == "cpu-2" for res in results)
    os.kill(_pid(deployment, "cpu-2"), signal.SIGKILL)  # the restart budget (1) is spent: stays down
    wait_until(lambda: "cpu-2" in coord.stats()["down_nodes"], "cpu-2 out of service", 60, 0.05)
    # the watcher reports an exit before it decides on a restart, and with the budget spent
    # it never spawns one: two processes of cpu-2, for good
    assert "cpu-2" in coord.stats()["down_nodes"] and len([w for w in deployment.workers if w.node == "cpu-2"]) == 2
