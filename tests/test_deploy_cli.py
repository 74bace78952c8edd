"""`helix-jax deploy TOPOLOGY` as a user runs it: plan, serve until Ctrl-C, stop cleanly; bad
arguments get one clear error before anything starts.

The whole command runs in a child process (coordinator + one worker process per node, real
ZeroMQ); the test talks to it through the endpoint it prints, like `helix-jax generate` would.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helix_jax.client import Client
from helix_jax.errors import HelixError

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "helix_jax.cli.main", "deploy"]
ENV = dict(os.environ, COLUMNS="250", JAX_PLATFORMS="cpu")


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def test_deploy_serves_until_interrupted_then_stops(tmp_path: Path) -> None:
    proc = subprocess.Popen(CLI + [str(ROOT / "topologies" / "cpu-small.json"), "--plan-time", "5",
                                   "--log-dir", str(tmp_path / "logs")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        endpoint, deadline = None, time.monotonic() + 240
        while endpoint is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "deploy exited early:\n" + "".join(seen)
            seen.append(line)
            found = re.search(r"client endpoint (tcp://\S+)", line)
            endpoint = found.group(1) if found else None
        printed = "".join(seen)
        assert "placement of cpu-small" in printed and "max-flow 420.0 tokens/s" in printed
        with Client(endpoint) as client:
            results = [client.generate(prompt, max_tokens=6) for prompt in ("Hello", "Max-flow", "GPUs")]
        for res in results:
            assert len(res.ids) == 6 and res.finish_reason == "length"
            assert res.route[0][1] == 0 and res.route[-1][2] == 8  # every answer crossed all 8 layers
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = []
    while (line := lines.get(timeout=10)) is not None:
        rest.append(line)
    assert "shutting down" in "".join(rest) and "".join(rest).rstrip().endswith("stopped")
    with pytest.raises(HelixError, match="got no reply within 2 s"):  # nobody serves the endpoint now
        with Client(endpoint, timeout_s=2) as client:
            client.generate("Hello", max_tokens=2)


@pytest.mark.parametrize("args, needle", [
    (["topologies/single-region-24-llama2-70b.json"], "model 'llama-2-70b' has no built-in weights"),
    (["topologies/cpu-small.json", "--model", "tiny-80"], "--model tiny-80 has 80 layers but the topology's model"),
    (["topologies/cpu-small.json", "--model", "tiny-4"], "model 'tiny-4' is neither a known preset"),
    (["topologies/cpu-small.json", "--heartbeat-timeout", "0"], "--heartbeat-timeout must be positive"),
    (["topologies/no-such-cluster.json"], "does not exist"),
])
def test_bad_deploy_arguments_get_one_clear_error(args: list[str], needle: str) -> None:
    proc = subprocess.run(CLI + args, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip()
    assert error.startswith("error: ") and needle in error and "\n" not in error, error
    assert "Traceback" not in proc.stdout and "serving" not in proc.stdout
