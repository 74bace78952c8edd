"""`helix-jax deploy` as a workflow: --dry-run plans and starts nothing; a failing step (a port in
use, a node whose host lacks the model) gives one message naming the step and the node, and
leaves nothing running. Each case runs the command in a child process, as a user does.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

from cli_run import run_cli

from helix_jax.topology import default_topology_path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "helix_jax.cli.main", "deploy"]
ENV = dict(os.environ, COLUMNS="250", JAX_PLATFORMS="cpu")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_dry_run_validates_plans_and_prints_what_would_launch_where(tmp_path: Path) -> None:
    topology = json.loads((ROOT / "topologies" / "cpu-tiny.json").read_text())
    topology["nodes"][2]["host"] = "10.0.0.7"
    path = tmp_path / "two-hosts.json"
    path.write_text(json.dumps(topology))
    proc = run_cli("deploy", str(path), "--dry-run", "--plan-time", "5", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"✓ validate topology .*\n.*3 nodes, model tiny-8", out), out
    assert "✓ plan placement" in out and "max-flow 420.0 tokens/s" in out
    assert re.search(r"cpu-0 .* 127\.0\.0\.1 .* \[0, 8\) .* local process", out), out
    assert re.search(r"cpu-2 .* 10\.0\.0\.7 .* manual: helix-jax worker --keys FILE", out), out
    assert "transport CURVE" in out and out.rstrip().endswith("dry run: nothing was started")
    assert "launch workers" not in out and not (tmp_path / "state").exists()
    ray = run_cli("deploy", str(path), "--dry-run", "--plan-time", "5", "--ray", "auto")
    assert ray.returncode == 0 and "Ray actor on the Ray node labelled helix-jax/host=10.0.0.7" in ray.stdout


def test_a_port_in_use_fails_the_launch_step_and_starts_nothing(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        proc = subprocess.run(
            CLI
            + [
                "topologies/cpu-tiny.json",
                "--port",
                str(port),
                "--plan-time",
                "5",
                "--http-port",
                "0",
                "--state-dir",
                str(tmp_path / "state"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
    finally:
        busy.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip()
    assert error == (f"error: launch: node coordinator on host 127.0.0.1: cannot bind client port {port}: Address already in use"), error
    assert "✓ plan placement" in proc.stdout and "✓ launch workers" not in proc.stdout
    assert not (tmp_path / "state" / "deployment.json").exists()  # no worker was ever started


def test_a_node_whose_host_lacks_the_model_fails_the_load_step_and_everything_stops(tmp_path: Path) -> None:
    """cpu-2 of the default topology (SmolLM2, a named model each host resolves in its own cache)
    sits on another host; its worker runs with an empty model cache there."""
    topology = json.loads(default_topology_path().read_text())
    topology["nodes"][2]["host"] = "other-host.invalid"
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(topology))
    state = tmp_path / "state"
    proc = subprocess.Popen(
        CLI + [str(path), "--plan-time", "5", "--http-port", "0", "--state-dir", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    remote = None
    try:
        for line in proc.stdout:
            if found := re.search(r"run on its host: helix-jax (worker .*)$", line):
                break
        else:
            raise AssertionError("deploy printed no worker command")
        remote = subprocess.run(
            [sys.executable, "-m", "helix_jax.cli.main", *found.group(1).split()],
            cwd=ROOT,
            env=dict(ENV, HELIX_MODELS=str(tmp_path / "empty-cache")),
            capture_output=True,
            text=True,
            timeout=300,
        )
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 2, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    assert remote.returncode == 1
    lines = err[0].strip().splitlines()
    assert len(lines) == 1, err[0]
    assert re.fullmatch(r"error: load: node cpu-2 on host other-host\.invalid: CheckpointError: .*models pull.*", lines[0]), lines[0]
    nodes = json.loads((state / "deployment.json").read_text())["nodes"]
    assert nodes["cpu-2"]["launcher"] == "manual"
    for node in ("cpu-0", "cpu-1"):  # the local workers were started, then torn down
        assert nodes[node]["launcher"] == "process" and not _alive(nodes[node]["pid"]), node
    assert "serving" not in rest
