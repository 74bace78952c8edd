"""InProcessCluster: a whole deployment in one process, for exact runtime tests.

The coordinator and one `Worker` per placed node run as threads of the caller's process and
talk over loopback TCP with the real wire format, the real scheduler and (when the config has
keys) real CURVE. Only the layers are replaced: each worker is given a runner factory,
`FakeRunner` by default (fake_runner.py), so nothing imports jax and every token can be
worked out by hand (`fake_generation`). Sits beside `runtime/deploy.py`'s LocalDeployment,
which runs the same coordinator with worker processes.

Faults, as an operator would see them:
* `kill(node)`: the worker's loop stops silently, and the cluster reports the exit to the
  coordinator (`report_node_down`), as LocalDeployment's watcher does for a dead process;
* `runner(node).freeze()`: its next batch hangs, so its heartbeats stop (the coordinator's
  timeout takes it out of service); `thaw()` lets it speak again;
* `start_worker(node)`: a fresh worker for the node registers and rejoins.
`wait_until(predicate)` waits for a state of the coordinator (events, not sleeps: it returns
as soon as the predicate holds, and fails with what was awaited after `timeout_s`).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

from helix_jax.errors import HelixError
from helix_jax.runtime.coordinator import Coordinator, ServeConfig
from helix_jax.runtime.runner import RunnerFactory, RunnerSpec, StageRunner
from helix_jax.runtime.worker import Worker, WorkerOptions
from helix_jax.testing.fake_runner import FakeRunner
from helix_jax.testing.waiting import wait_until


@dataclasses.dataclass
class WorkerThread:
    node: str
    worker: Worker
    thread: threading.Thread
    exit_code: int | None = None


class InProcessCluster:
    """Coordinator + worker threads of one ServeConfig; a context manager."""

    def __init__(self, config: ServeConfig, codec: Any, runner_factory: RunnerFactory = FakeRunner) -> None:
        self.config, self.codec = config, codec
        self._factory = runner_factory
        self.coordinator: Coordinator | None = None
        self._thread: threading.Thread | None = None
        self.workers: list[WorkerThread] = []
        self._runners: dict[str, StageRunner] = {}  # node -> its newest worker's runner
        self._closing = threading.Event()

    # ---- lifecycle
    def __enter__(self) -> "InProcessCluster":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> "InProcessCluster":
        self.coordinator = Coordinator(self.config, self.codec)
        self._thread = threading.Thread(target=self.coordinator.run, name="helix-coordinator", daemon=True)
        self._thread.start()
        for node in sorted(self.config.placement.ranges):
            self.start_worker(node)
        return self

    def start_worker(self, node: str) -> WorkerThread:
        """A fresh worker thread for `node` (at start, or to rejoin a node out of service)."""
        assert self.coordinator is not None
        keys = self.config.keys.worker(node) if self.config.keys is not None else None
        options = WorkerOptions(self.coordinator.control_endpoint, node, keys=keys)

        def factory(spec: RunnerSpec) -> StageRunner:
            runner = self._factory(spec)
            self._runners[node] = runner
            return runner

        worker = Worker(options, factory)
        entry = WorkerThread(node, worker, threading.Thread(target=lambda: None))
        entry.thread = threading.Thread(target=self._run_worker, args=(entry,), name=f"helix-worker-{node}", daemon=True)
        self.workers.append(entry)
        entry.thread.start()
        return entry

    def _run_worker(self, entry: WorkerThread) -> None:
        """The worker's loop; its end while serving is reported like a process exit."""
        why = "returned"
        try:
            entry.exit_code = entry.worker.run()
            why = f"exited with code {entry.exit_code}"
        except BaseException as exc:
            why = f"died: {type(exc).__name__}: {exc}"
            raise
        finally:
            newest = self.worker(entry.node) is entry  # an old worker sent away says nothing of its successor
            if newest and not self._closing.is_set() and self.coordinator is not None:
                self.coordinator.report_node_down(entry.node, f"worker thread {why}")

    def wait_ready(self, timeout_s: float = 60.0) -> "InProcessCluster":
        coord = self.coordinator
        assert coord is not None
        if not coord.ready_event.wait(timeout_s):
            raise HelixError(f"the in-process cluster was not ready after {timeout_s:g} s: {coord.phases}")
        if coord.failure:
            raise HelixError(coord.failure)
        return self

    def close(self) -> None:
        """Stop the coordinator (it tells every worker to shut down), then join every thread."""
        self._closing.set()
        for runner in self._runners.values():  # a frozen runner would never see the shutdown
            thaw = getattr(runner, "thaw", None)
            if thaw is not None:
                thaw()
        if self.coordinator is not None and self._thread is not None:
            self.coordinator.stop()
            self._thread.join(timeout=30)
            self._thread = None
        for entry in self.workers:
            entry.worker.stop()
            entry.thread.join(timeout=30)

    # ---- access and faults
    @property
    def client_endpoint(self) -> str:
        assert self.coordinator is not None
        return self.coordinator.client_endpoint

    def runner(self, node: str) -> Any:
        """The runner of the node's newest worker (a FakeRunner unless another factory was given)."""
        return self._runners[node]

    def worker(self, node: str) -> WorkerThread:
        return [w for w in self.workers if w.node == node][-1]

    def kill(self, node: str) -> None:
        """The node's worker stops without a word (nothing it computes from now on is sent); its
        thread's end is reported as a process exit."""
        entry = self.worker(node)
        entry.worker.stop()
        thaw = getattr(self._runners.get(node), "thaw", None)
        if thaw is not None:  # a frozen batch finishes, and its results are dropped
            thaw()
        entry.thread.join(timeout=30)

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        """Return once `predicate()` holds (checked every 10 ms); AssertionError naming `what` if
        it does not within `timeout_s` (a hang, not a slow machine)."""
        wait_until(predicate, what, timeout_s)
