"""`helix-jax deploy TOPOLOGY` as a user runs it: plan, serve until Ctrl-C, stop cleanly; bad
arguments get one clear error before anything starts.

The whole command runs in a child process (coordinator + one worker process per node, real
ZeroMQ); the test talks to it through the endpoint it prints, like `helix-jax generate` would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cli_run import Deploy, run_cli

from helix_jax.client import Client
from helix_jax.costmodel import CostModel
from helix_jax.errors import HelixError
from helix_jax.topology import COORDINATOR, load_topology

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, COLUMNS="250", JAX_PLATFORMS="cpu")


def test_deploy_serves_until_interrupted_then_stops(tmp_path: Path) -> None:
    """cpu-2 sits on another host: deploy starts only cpu-0 and cpu-1, prints the command for
    cpu-2 and waits; running that command (here, on this machine) completes the deployment, which
    serves our client and the HTTP API until Ctrl-C, then stops every worker, the remote one too.
    (One deployment for all of it: a tiny deployment costs ~35 s of the 2-core machine's CPU.)"""
    topology = json.loads((ROOT / "topologies" / "cpu-tiny.json").read_text())
    topology["nodes"][2]["host"] = "gpu-box.invalid"
    path = tmp_path / "two-hosts.json"
    path.write_text(json.dumps(topology))
    # --max-seq-len 256: the shapes of tests/test_http_drain.py's and tests/test_serve_security.py's
    # deployments, so that only the first of them compiles its programs (the run's compile cache)
    dep = Deploy(
        [str(path), "--plan-time", "5", "--max-seq-len", "256", "--log-dir", str(tmp_path / "logs"), "--state-dir", str(tmp_path / "state")]
    )
    remote = None
    try:
        command = dep.wait_for(
            r"run on its host: (helix-jax worker --coordinator tcp://\S+ --node cpu-2 "
            r"--keys \S+)$"
        )
        assert command.endswith(str(tmp_path / "state" / "keys" / "cpu-2.json"))
        args = command.split()[1:]  # as the user would type it, through this interpreter
        remote = subprocess.Popen(
            [sys.executable, "-m", "helix_jax.cli.main", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = dep.wait_for(r"HTTP API: (http://\S+)/v1")
        dep.wait_for(r"client endpoint (tcp://\S+)")
        connection = dep.wait_for(r"connection file: (\S+)")
        assert connection == str(tmp_path / "state" / "connection.json")
        printed = "".join(dep.seen)
        assert "placement of cpu-tiny" in printed and "max-flow 420.0 tokens/s" in printed
        with Client.from_connection_file(connection) as client:
            results = [client.generate(f"request {i}", max_tokens=6) for i in range(8)]
        for res in results:
            assert len(res.ids) == 6 and res.finish_reason == "length"
            assert res.route[0][1] == 0 and res.route[-1][2] == 8  # every answer crossed all 8 layers
        # the 2-hop route carries 160 of the 420 tokens/s: weighted round robin sends some of 8 there
        routes = {res.route for res in results}
        assert (("cpu-1", 0, 4), ("cpu-2", 4, 8)) in routes and (("cpu-0", 0, 8),) in routes
        # the in-process HTTP front end reaches the CURVE coordinator with the client keypair
        reply = httpx.post(
            f"{url}/v1/completions", json={"model": "tiny-8", "prompt": [256, 72, 105], "max_tokens": 4, "temperature": 0}, timeout=120
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4, reply.text
        rest = dep.interrupt()
        assert remote.wait(timeout=60) == 0  # the remote worker was told to shut down, and did
    finally:
        dep.kill()
        if remote is not None and remote.poll() is None:
            remote.kill()
    assert "shutting down" in rest and rest.rstrip().endswith("stopped")
    assert "restarting the worker" not in rest  # the group's Ctrl-C reached deploy alone, which stopped its workers
    with pytest.raises(HelixError, match="got no reply within 2 s"):  # nobody serves the endpoint now
        with Client.from_connection_file(connection, timeout_s=2) as client:
            client.generate("Hello", max_tokens=2)


@pytest.mark.benchmark  # wall-clock latencies: `make bench-timing`, not the default test run
def test_emulated_deployment_keeps_the_cost_models_time(tmp_path: Path) -> None:
    """--emulate: workers compute tiny-8 but release each step when a T4 would have finished its
    4 layers of LLaMA-2-70B, and each transfer when its 2 ms link would have delivered it. The
    latencies a client sees (reported in emulated seconds) must be the cost model's arithmetic."""
    path = ROOT / "topologies" / "fixtures" / "t4-pair-70b-slice.json"
    scale = 4.0  # emulated time runs 4x slower than the wall clock: this CPU is never the bottleneck
    dep = Deploy(
        [
            str(path),
            "--emulate",
            "--model",
            "tiny-8",
            "--time-scale",
            str(scale),
            "--log-dir",
            str(tmp_path / "logs"),
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    try:
        connection = dep.wait_for(r"connection file: (\S+)")
        with Client.from_connection_file(connection) as client:
            # prompts of 41 and 121 tokens: emulated prefill (95 and 265 ms of wall time per worker
            # at this scale) outlasts this CPU's prefill, padded to --max-seq-len under --emulate
            results = [client.generate(prompt, max_tokens=4) for prompt in ("x" * 40, "x" * 120)]
        dep.interrupt()
    finally:
        dep.kill()
    for node in ("t4-0", "t4-1"):  # the premise: no step took this CPU longer than the T4 it emulates
        assert re.search(r"served \d+ steps .* 0 overruns", (tmp_path / "logs" / f"{node}.log").read_text())
    topology = load_topology(path)
    cm = CostModel(topology)
    route = (("t4-0", 0, 4), ("t4-1", 4, 8))
    for res in results:
        assert res.route == route and res.timings.time_scale == scale
        p = res.prompt_tokens
        ttft = (
            8 * cm.layer_step_seconds("T4", p, 0)
            + cm.transfer_seconds(COORDINATOR, "t4-0", p)
            + cm.transfer_seconds("t4-0", "t4-1", p)
            + cm.transfer_seconds("t4-1", COORDINATOR, 1)
        )
        tpot = (
            8 * cm.layer_step_seconds("T4", 0, 1, p + 2)
            + cm.transfer_seconds(COORDINATOR, "t4-0", 1)
            + cm.transfer_seconds("t4-0", "t4-1", 1)
            + cm.transfer_seconds("t4-1", COORDINATOR, 1)
        )
        # 47 / 132 ms of T4 prefill, ~117 ms per decode token; a few ms of real work may add on top
        assert ttft <= res.timings.ttft_s <= 1.1 * ttft + 0.002, (p, res.timings.ttft_s, ttft)
        assert tpot <= res.timings.tpot_s <= 1.05 * tpot + 0.002, (p, res.timings.tpot_s, tpot)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["topologies/single-region-24-llama2-70b.json"], "model 'llama-2-70b' has no built-in weights"),
        (["topologies/cpu-tiny.json", "--model", "tiny-80"], "--model tiny-80 has 80 layers but the topology's model"),
        (["topologies/cpu-tiny.json", "--model", "tiny-4"], "model 'tiny-4' is neither a known preset"),
        (["topologies/cpu-tiny.json", "--heartbeat-timeout", "0"], "--heartbeat-timeout must be positive"),
        (["topologies/cpu-tiny.json", "--resume-grace-s", "-1"], "--resume-grace-s must be >= 0 and finite"),
        (["topologies/cpu-tiny.json", "--layer-loop", "loop"], "--layer-loop must be auto, scan or unroll, got 'loop'"),
        (["topologies/cpu-tiny.json", "--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        (["topologies/cpu-tiny.json", "--gather-ms", "nan"], "--gather-ms must be in [0, 60000], got nan"),
        (["topologies/cpu-tiny.json", "--api-key", "k1,k1"], "--api-key lists the same key twice"),
        (["topologies/cpu-tiny.json", "--key-queue-share", "0"], "--key-queue-share must be >= 1"),
        (["topologies/no-such-cluster.json"], "does not exist"),
    ],
)
def test_bad_deploy_arguments_get_one_clear_error(args: list[str], needle: str) -> None:
    proc = run_cli("deploy", *[str(ROOT / a) if a.startswith("topologies/") else a for a in args], "--http-port", "0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip()
    assert error.startswith("error: ") and needle in error and "\n" not in error, error
    assert "Traceback" not in proc.stdout and "serving" not in proc.stdout
