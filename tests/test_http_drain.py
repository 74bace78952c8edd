"""Graceful drain of `helix-jax deploy --http-port 0` on SIGTERM, as an operator's
orchestrator sends it: requests in flight complete, new requests and /ready get 503, and
the process exits with code 0.

To keep requests in flight for as long as the test needs (no timing assumptions), the
deployment's worker processes are paused with SIGSTOP once every stream has its first token,
and resumed with SIGCONT after the 503s have been checked. The SIGTERM goes to deploy's whole
process group; a worker that shared it would die on SIGCONT with its requests in flight.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai

from helix_jax.topology import tiny_topology_path

ENV = dict(os.environ, COLUMNS="250", JAX_PLATFORMS="cpu")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_sigterm_lets_requests_in_flight_finish_refuses_new_ones_and_exits() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "helix_jax.cli.main",
            "deploy",
            str(tiny_topology_path()),
            "--http-port",
            "0",
            "--max-seq-len",
            "256",  # the shapes of the deploy CLI's and the demo's deployments: see tests/test_deploy_cli.py
            "--heartbeat-timeout",
            "600",
            "--restart-workers",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,  # a process group of its own, as a shell gives a command it runs
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=300)
            assert line is not None, "deploy exited early:\n" + "".join(seen)
            seen.append(line)
            if found := re.search(r"HTTP API: (http://127\.0\.0\.1:\d+)/v1", line):
                url = found.group(1)
                break
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        first = [threading.Event() for _ in range(3)]
        finished: list[str | None] = [None] * 3

        def stream(i: int) -> None:
            for chunk in client.completions.create(model="tiny-8", prompt=f"in flight {i}", max_tokens=40, temperature=0, stream=True):
                first[i].set()
                finished[i] = chunk.choices[0].finish_reason or finished[i]

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for ev in first:
            assert ev.wait(120)
        workers = _children(proc.pid)
        assert len(workers) == 3
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            # to deploy's whole process group, as `kill -TERM -PGID` and `timeout` send it: the
            # workers run in sessions of their own, so it reaches deploy alone, which drains
            os.killpg(proc.pid, signal.SIGTERM)
            for _ in range(10_000):  # the drain starts when the signal is handled
                ready = httpx.get(f"{url}/ready", timeout=30)
                if ready.status_code == 503:
                    break
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
            try:
                client.completions.create(model="tiny-8", prompt="late", max_tokens=2)
                raise AssertionError("a request after SIGTERM was accepted")
            except openai.InternalServerError as exc:
                assert exc.status_code == 503 and "shutting down" in exc.response.json()["error"]["message"]
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # alive while draining
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        for t in threads:
            t.join(120)
        assert all(reason in ("stop", "length") for reason in finished), finished
        assert proc.wait(timeout=120) == 0
        out = "".join(seen) + "".join(x for x in iter(lines.get, None))
        assert "draining the HTTP API" in out and "stopped" in out and "cancelled" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
