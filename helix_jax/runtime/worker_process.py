"""Worker processes on this machine: where a node runs, the command that starts its worker, and
the process itself with its log.

Used by deploy.py (local processes) and ray_launch.py (an actor's worker); touches only the
process table and the log files.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Mapping

LOCAL_HOSTS = {None, "", "127.0.0.1", "localhost", "::1", "0.0.0.0"}
# several CPU workers on one machine: Eigen's own multi-threading off (measured: 24.5 -> 37.7 tok/s
# for SmolLM2 on 3 workers, 2 cores). XLA's intra-op pool (one thread per core) still runs the
# YNNPACK matmuls; a 1-thread pool was tried and is slower (BENCHMARKS.md, 2026-12-07 fifth session)
SHARED_CPU_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def is_local_host(host: str | None) -> bool:
    """Whether a node's `host` field names this machine."""
    if host in LOCAL_HOSTS:
        return True
    assert host is not None
    names = {socket.gethostname(), socket.getfqdn()}
    if host in names:
        return True
    try:
        return socket.gethostbyname(host) in {"127.0.0.1", socket.gethostbyname(socket.gethostname())}
    except OSError:
        return False


def worker_command(control_endpoint: str, node: str, parent_pid: int | None = None, keys_file: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "helix_jax.cli.main", "worker", "--coordinator", control_endpoint, "--node", node]
    if keys_file is not None:
        cmd += ["--keys", str(keys_file)]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    return cmd


@dataclasses.dataclass(frozen=True)
class WorkerProcess:
    node: str
    process: subprocess.Popen
    log_path: Path


def spawn_worker(node: str, command: list[str], log_path: Path, extra_env: Mapping[str, str], shared_cpu: bool) -> WorkerProcess:
    """Start `command` with its output in `log_path`; JAX on the CPU unless the caller chose,
    and one XLA compute thread when several workers share this CPU (`shared_cpu`)."""
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), **extra_env}
    if env["JAX_PLATFORMS"] == "cpu" and shared_cpu and "XLA_FLAGS" not in env:
        env["XLA_FLAGS"] = SHARED_CPU_XLA_FLAGS
    with open(log_path, "wb") as log_file:
        # a session of its own: a Ctrl-C in deploy's terminal (SIGINT to the whole foreground
        # process group) reaches only deploy, which drains and then stops its workers itself;
        # a worker whose deploy dies goes too (--parent-pid)
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return WorkerProcess(node, proc, log_path)


def tail_log(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a worker's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
