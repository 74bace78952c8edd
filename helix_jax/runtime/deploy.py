"""Process management of a deployment: coordinator thread + one worker process per local node.

Sits at the top of the runtime: `helix-jax deploy` / `demo`, the serving benchmark and the
tests build a `ServeConfig` (topology, placement with flows, model) and open a
`LocalDeployment`. It starts the coordinator's loop in a thread of this process, starts a
`helix-jax worker` subprocess for every node whose host is this machine, lists the command
to run on other hosts, and waits until every worker has compiled its buckets. `close()`
(also on exceptions and Ctrl-C via the context manager) shuts the workers down over the
control socket, waits for them, kills stragglers and closes every socket: no orphans.
Without `log_dir` or `state_dir` the deployment's logs, keys and connection file go to a
temporary directory of its own, which `close()` removes when every worker it started exited
cleanly, and keeps (saying where) otherwise. Workers also exit by themselves when this
process dies (they watch their parent pid).
Once serving, a watcher thread reports a local worker whose process exits to the
coordinator (`report_node_down`), which moves its requests to surviving routes at once
instead of waiting for the heartbeat timeout; with `restart_workers` it also starts a
replacement worker (at most `max_restarts` per node within `restart_window_s`, restarts.py),
which rejoins once warm.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from helix_jax.errors import HelixError
from helix_jax.runtime.coordinator import Coordinator, ServeConfig
from helix_jax.runtime.restarts import RestartBudget
from helix_jax.runtime.security import write_connection_file
from helix_jax.runtime.worker_process import (
    WorkerProcess,
    is_local_host,
    spawn_worker,
    tail_log,
    worker_command,
)
from helix_jax.runtime.workflow import StepFailed, current_step, failed_step, progress_of, write_deployment_json

logger = logging.getLogger(__name__)


class LocalDeployment:
    """A running deployment; use as a context manager (or call `start()` / `close()`)."""

    restarts_by_budget = True  # crashed workers are restarted here, within `budget` (restarts.py)

    def __init__(
        self,
        config: ServeConfig,
        codec: Any,
        log_dir: str | Path | None = None,
        worker_env: dict[str, str] | None = None,
        restart_workers: bool = False,
        max_restarts: int = 3,
        state_dir: str | Path | None = None,
        restart_window_s: float = 600.0,
    ) -> None:
        self.config, self.codec = config, codec
        self.restart_workers, self.max_restarts = restart_workers, max_restarts
        self.budget = RestartBudget(max_restarts, restart_window_s)
        self.restarts: dict[str, int] = {}  # restarts taken per node (all time)
        self._own_dir = log_dir is None and state_dir is None  # a temporary directory: close() removes it
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="helix-deploy-"))
        self.state_dir = Path(state_dir) if state_dir is not None else self.log_dir  # keys, connection.json
        self.worker_env = worker_env or {}
        self.coordinator: Coordinator | None = None
        self._thread: threading.Thread | None = None
        self.workers: list[WorkerProcess] = []
        self.remote_nodes: list[str] = []
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---- endpoints
    @property
    def client_endpoint(self) -> str:
        assert self.coordinator is not None
        return self.coordinator.client_endpoint

    def remote_commands(self) -> list[str]:
        """`helix-jax worker ...` lines to run on the other hosts."""
        assert self.coordinator is not None
        endpoint = self.coordinator.control_endpoint
        return [" ".join(["helix-jax", *worker_command(endpoint, node, None, self.keys_file(node))[3:]]) for node in self.remote_nodes]

    def keys_file(self, node: str) -> Path | None:
        """The node's private keys file (mode 0600; written by `start()`), None without CURVE."""
        if self.config.keys is None:
            return None
        return self.state_dir / "keys" / f"{node}.json"

    @property
    def connection_file(self) -> Path:
        """connection.json (mode 0600): client endpoint and, with CURVE, the server key and a client keypair."""
        return self.state_dir / "connection.json"

    # ---- lifecycle
    def start(self) -> "LocalDeployment":
        cfg = self.config
        try:
            self.coordinator = Coordinator(cfg, self.codec)
            if self.restart_workers and self.restarts_by_budget:  # its stats show restarts taken and left
                self.coordinator.health.restart_budget = self.budget
        except zmq.ZMQError as exc:
            port = f"client port {cfg.client_port}" if cfg.client_port else "a free port"
            raise StepFailed("launch", f"cannot bind {port}: {zmq.strerror(exc.errno or 0)}", "coordinator", cfg.host) from None
        self._thread = threading.Thread(target=self.coordinator.run, name="helix-coordinator", daemon=True)
        self._thread.start()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        write_connection_file(self.connection_file, self.coordinator.client_endpoint, cfg.keys.client() if cfg.keys is not None else None)
        if cfg.keys is not None:
            for node in cfg.placement.ranges:
                path = self.keys_file(node)
                assert path is not None
                cfg.keys.worker(node).write(path)
        self._launch_workers()
        self.write_state("starting")
        return self

    def _launch_workers(self) -> None:
        """A local process per node on this machine; the others are listed by `remote_commands`."""
        for node in sorted(self.config.placement.ranges):
            if not is_local_host(self.config.topology.node(node).host):
                self.remote_nodes.append(node)
                continue
            self._spawn(node, self.log_dir / f"{node}.log")
        logger.info("started %d local worker(s); logs in %s", len(self.workers), self.log_dir)

    def host_of(self, node: str) -> str:
        return self.config.topology.node(node).host or "127.0.0.1"

    @property
    def deployment_file(self) -> Path:
        return self.state_dir / "deployment.json"

    def node_records(self) -> dict[str, dict[str, Any]]:
        """deployment.json's per-node entries: host, how it was launched, pid, log path."""
        records: dict[str, dict[str, Any]] = {
            n: {"host": self.host_of(n), "launcher": "manual", "layers": list(self.config.placement.ranges[n])} for n in self.remote_nodes
        }
        for w in self.workers:  # the newest process of each node wins
            records[w.node] = {
                "host": self.host_of(w.node),
                "launcher": "process",
                "pid": w.process.pid,
                "log": str(w.log_path),
                "layers": list(self.config.placement.ranges[w.node]),
            }
        return records

    def write_state(self, status: str) -> Path:
        """Write deployment.json (placement, endpoints, nodes, connection file) to the state dir."""
        assert self.coordinator is not None
        c = self.coordinator
        return write_deployment_json(
            self.deployment_file,
            {
                "name": self.config.topology.name,
                "status": status,
                "model": self.config.model.name,
                "transport": "curve" if self.config.keys is not None else "insecure",
                "endpoints": {"client": c.client_endpoint, "control": c.control_endpoint, "data": c.data_endpoint},
                "connection_file": str(self.connection_file),
                "log_dir": str(self.log_dir),
                "placement": {n: list(r) for n, r in self.config.placement.ranges.items()},
                "nodes": self.node_records(),
            },
        )

    def _spawn(self, node: str, log_path: Path) -> WorkerProcess:
        assert self.coordinator is not None
        local = sum(is_local_host(self.config.topology.node(n).host) for n in self.config.placement.ranges)
        command = worker_command(self.coordinator.control_endpoint, node, os.getpid(), self.keys_file(node))
        worker = spawn_worker(node, command, log_path, self.worker_env, shared_cpu=local > 1)
        self.workers.append(worker)
        return worker

    def wait_ready(self, timeout_s: float = 600.0, on_progress: Any = None) -> None:
        """Block until every worker is warm; `on_progress(list of StepProgress)` every 0.25 s.
        On failure StepFailed names the step, the node, its host and the cause."""
        coord = self.coordinator
        assert coord is not None
        nodes, started = sorted(self.config.placement.ranges), time.monotonic()
        while not coord.ready_event.wait(0.25):
            if on_progress is not None:
                on_progress(progress_of(coord.phases, nodes, started))
            for node, code, log in self._exited():
                if coord.ready_event.wait(1.0) and coord.failed_node:
                    break  # it reported why before exiting: that is the better message
                phase = coord.phases.get(node, (None, 0.0))[0]
                raise StepFailed(
                    failed_step(phase),
                    f"worker exited with code {code} (log {log}): {tail_log(log, 1) or 'no output'}",
                    node,
                    self.host_of(node),
                )
            if time.monotonic() > started + timeout_s:
                slow = current_step(progress_of(coord.phases, nodes, started))
                slowest = slow.slowest[0] if slow and slow.slowest else None
                raise StepFailed(
                    slow.step if slow else "ready",
                    f"not done after {timeout_s:.0f} s (logs in {self.log_dir})",
                    slowest,
                    self.host_of(slowest) if slowest else None,
                )
        if on_progress is not None:
            on_progress(progress_of(coord.phases, nodes, started))
        if coord.failed_node:
            node, phase, message = coord.failed_node
            raise StepFailed(failed_step(phase), message, node, self.host_of(node))
        if coord.failure:
            raise HelixError(coord.failure)
        self.write_state("serving")
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_workers, name="helix-worker-watch", daemon=True)
            self._watcher.start()

    def _exited(self) -> list[tuple[str, int, Path]]:
        """(node, exit code, log path) of every worker process that has exited."""
        return [(w.node, w.process.returncode, w.log_path) for w in self.workers if w.process.poll() is not None]

    def _watch_workers(self, period_s: float = 0.2) -> None:
        """Tell the coordinator about every local worker process that exits while serving."""
        seen: set[int] = set()  # pids already reported (a node's replacement is a new process)
        while not self._closing.wait(period_s):
            for w in list(self.workers):
                code = w.process.poll()
                if code is not None and w.process.pid not in seen and self.coordinator is not None:
                    seen.add(w.process.pid)
                    self.coordinator.report_node_down(w.node, f"worker process exited with code {code} (log: {w.log_path})")
                    if self.restart_workers and not self._closing.is_set() and self.budget.take(w.node):
                        done = self.restarts[w.node] = self.budget.total[w.node]
                        logger.warning(
                            "restarting the worker of %s (restart %d; %d more allowed within %.0f s)",
                            w.node,
                            done,
                            self.budget.left(w.node),
                            self.budget.window_s,
                        )
                        self._spawn(w.node, self.log_dir / f"{w.node}.restart{done}.log")

    def close(self, timeout_s: float = 20.0) -> None:
        """Shut down workers and coordinator; kill anything that does not exit in time (at once
        when start-up failed or was interrupted: a loading worker hears no shutdown)."""
        serving = self.coordinator is not None and self.coordinator.scheduler is not None
        if not serving:
            timeout_s = min(timeout_s, 1.0)
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        if self.coordinator is not None and self._thread is not None:
            self.coordinator.stop()
            self._thread.join(timeout=10)
            self._thread = None
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            try:
                w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                (logger.warning if serving else logger.info)("worker %s did not exit; terminating it", w.node)
                w.process.terminate()
                try:
                    w.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    w.process.kill()
                    w.process.wait()
        if self._own_dir:
            if all(w.process.returncode == 0 for w in self.workers):
                shutil.rmtree(self.log_dir, ignore_errors=True)
            else:
                logger.warning("a worker exited with an error: logs kept in %s", self.log_dir)
            self._own_dir = False  # once

    def __enter__(self) -> "LocalDeployment":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()
