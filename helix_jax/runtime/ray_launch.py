"""Ray as the launcher and supervisor of the workers; ZeroMQ stays the data path.

Owns: `RayDeployment` (a LocalDeployment whose workers are Ray actors), `match_ray_nodes`
(topology node -> the Ray node labelled `helix-jax/host=<host>`, or with the host's IP when no
Ray node has labels; a clear launch error listing the Ray nodes seen otherwise) and
`WorkerActor`, a small actor pinned to its Ray node (NodeAffinitySchedulingStrategy, soft=False;
`num_gpus` for GPU nodes) that runs `helix-jax worker` as its child process (which exits when the
actor dies; started by `start()`, which the deployment calls once the coordinator knows that the
node's previous worker is gone), writes the node's keys (handed over in the launch call) to a
0600 file on its node, and keeps the worker's log among that Ray node's log files.

Sits where LocalDeployment starts processes (top of the runtime): the coordinator still runs
in the deploy process; a watcher thread per actor turns the death of an actor (or of its worker
process) into `Coordinator.report_node_down`; Ray restarts it (`max_restarts` = --restart-workers)
and the fresh worker rejoins as any replacement does. `close()` shuts the workers down over
the control socket and kills every actor.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from helix_jax.runtime.deploy import LocalDeployment
from helix_jax.runtime.security import is_loopback
from helix_jax.runtime.worker_process import SHARED_CPU_XLA_FLAGS
from helix_jax.runtime.workflow import StepFailed

logger = logging.getLogger(__name__)

LABEL = "helix-jax/host"
ACTOR_PREFIX = "helix-worker-"


def match_ray_nodes(hosts: dict[str, str], ray_nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """topology node -> its Ray node (`ray.nodes()` entries); StepFailed("launch") for a host no
    Ray node matches, listing the Ray nodes seen."""
    alive = [n for n in ray_nodes if n.get("Alive")]
    labelled = any((n.get("Labels") or {}).get(LABEL) for n in alive)
    out = {}
    for node, host in sorted(hosts.items()):
        if labelled:
            found = [n for n in alive if (n.get("Labels") or {}).get(LABEL) == host]
        else:
            found = [n for n in alive if n.get("NodeManagerAddress") == host]
        if not found:
            seen = (
                "; ".join(
                    f"{n['NodeID'][:8]} at {n.get('NodeManagerAddress')} ({LABEL}={(n.get('Labels') or {}).get(LABEL, '-')})" for n in alive
                )
                or "none"
            )
            how = f"label {LABEL}={host}" if labelled else f"IP address {host} (no Ray node has a {LABEL} label)"
            raise StepFailed("launch", f"no Ray node with {how}; Ray nodes seen: {seen}", node, host)
        out[node] = found[0]
    return out


class WorkerActor:
    """One worker: `helix-jax worker` as a child of this actor (decorated with ray.remote at use)."""

    def __init__(self, node: str, coordinator: str, keys: dict[str, Any] | None, advertise: str, env: dict[str, str]) -> None:
        import ray

        from helix_jax.runtime.security import WorkerKeys, write_private_json
        from helix_jax.runtime.worker_process import worker_command

        self.node = node
        ctx = ray.get_runtime_context()
        self.node_id, self.actor_id = ctx.get_node_id(), ctx.get_actor_id()
        try:  # the Ray node's log directory (reachable with `ray logs`); a temp dir otherwise
            base = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
        except Exception:
            base = Path(tempfile.gettempdir())
        restart = ctx.was_current_actor_reconstructed
        self.log_path = base / "helix-jax" / f"{node}{'.restarted' if restart else ''}.{os.getpid()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        keys_file = None
        if keys is not None:
            keys_file = Path(tempfile.mkdtemp(prefix="helix-keys-")) / f"{node}.json"
            write_private_json(keys_file, keys)
            WorkerKeys.read(keys_file)  # fail here, visibly, on a malformed hand-over
        bind = advertise if is_loopback(advertise) else "0.0.0.0"
        self.cmd = worker_command(coordinator, node, os.getpid(), keys_file)
        self.cmd[0] = sys.executable
        self.cmd += ["--bind-host", bind, "--advertise-host", advertise]
        self.env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> dict[str, Any]:
        """Start the worker (once per actor life) and return `info()`. Not in `__init__`: Ray
        re-runs that as soon as it restarts the actor, and the fresh worker must not register
        before the coordinator has taken the node out of service (it would be refused)."""
        if self.proc is None:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self.info()

    def info(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "actor_id": self.actor_id,
            "pid": self.proc.pid if self.proc else None,
            "actor_pid": os.getpid(),
            "log": str(self.log_path),
        }

    def wait(self) -> int:
        """Block until the worker exits; an unplanned exit kills this actor so Ray restarts it."""
        assert self.proc is not None, "wait() before start()"
        code = self.proc.wait()
        if code != 0:
            os._exit(1)
        return code


class RayDeployment(LocalDeployment):
    """A LocalDeployment whose workers are Ray actors pinned to the Ray nodes of their hosts."""

    restarts_by_budget = False  # Ray restarts the actors (max_restarts); no RestartBudget to show

    def __init__(self, *args: Any, ray_address: str = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ray_address = ray_address
        self.actors: dict[str, Any] = {}
        self.actor_info: dict[str, dict[str, Any]] = {}
        self.ray_nodes: dict[str, dict[str, Any]] = {}
        self._dead: list[tuple[str, str]] = []  # (node, why) of actors that died during start-up
        self._watchers: list[threading.Thread] = []

    def _launch_workers(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cfg = self.config
        if not ray.is_initialized():
            try:
                ray.init(address=self.ray_address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as exc:  # ConnectionError and friends: name the address
                raise StepFailed("launch", f"cannot connect to the Ray cluster at {self.ray_address}: {exc}") from None
        hosts = {n: cfg.topology.node(n).host or "127.0.0.1" for n in cfg.placement.ranges}
        self.ray_nodes = match_ray_nodes(hosts, ray.nodes())
        actor_cls = ray.remote(WorkerActor)
        assert self.coordinator is not None
        per_machine = Counter(n["NodeManagerAddress"] for n in self.ray_nodes.values())
        for node, ray_node in self.ray_nodes.items():
            gpu = not cfg.topology.node(node).gpu.lower().startswith("cpu")
            env = dict(self.worker_env)
            if not gpu and per_machine[ray_node["NodeManagerAddress"]] > 1:
                env.setdefault("XLA_FLAGS", SHARED_CPU_XLA_FLAGS)  # CPU workers sharing a machine, as local ones
            keys = None
            if cfg.keys is not None:
                w = cfg.keys.worker(node)
                keys = {
                    "node": node,
                    "public": w.own.public,
                    "secret": w.own.secret,
                    "coordinator_public": w.coordinator_public,
                    "peers": dict(w.peers),
                }
            self.actors[node] = actor_cls.options(
                name=f"{ACTOR_PREFIX}{cfg.topology.name}-{node}",
                num_cpus=0 if gpu else 1,
                num_gpus=1 if gpu else 0,
                max_restarts=self.max_restarts if self.restart_workers else 0,
                max_task_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(ray_node["NodeID"], soft=False),
            ).remote(node, self.coordinator.control_endpoint, keys, ray_node["NodeManagerAddress"], env)
        for node, actor in self.actors.items():
            self.actor_info[node] = ray.get(actor.start.remote(), timeout=300)
            thread = threading.Thread(target=self._watch_actor, args=(node, actor), daemon=True, name=f"helix-ray-watch-{node}")
            thread.start()
            self._watchers.append(thread)
        logger.info("started %d Ray actor(s)", len(self.actors))

    def _watch_actor(self, node: str, actor: Any) -> None:
        """Actor death -> report_node_down; Ray restarts it (its budget) and the worker rejoins."""
        import ray

        deaths = 0
        while not self._closing.is_set():
            try:
                ray.get(actor.wait.remote())
                return  # the worker exited by itself after `shutdown`
            except Exception as exc:  # RayActorError / ActorDiedError / ActorUnavailableError
                if self._closing.is_set():
                    return
                deaths += 1
                why = f"Ray actor of {node} died ({type(exc).__name__})"
                self._dead.append((node, why))
                if self.coordinator is not None:
                    self.coordinator.report_node_down(node, why)
                if not self.restart_workers or deaths > self.max_restarts:
                    return
                self.restarts[node] = deaths
                while self.coordinator is not None and node not in self.coordinator.down_nodes:
                    if self._closing.wait(0.01):  # until the coordinator's loop has acted on the report
                        return
                info = self._start_restarted(actor)  # its fresh worker registers as the node's replacement
                if info is None:
                    return
                self.actor_info[node] = info
                self.write_state("serving")

    def _start_restarted(self, actor: Any) -> dict[str, Any] | None:
        """`start()` of the actor Ray is restarting, asked again while Ray reports it unavailable
        (still restarting); None once it is dead for good (its Ray node gone) or on close."""
        import ray
        from ray.exceptions import ActorUnavailableError

        while not self._closing.is_set():
            try:
                return ray.get(actor.start.remote(), timeout=600)
            except ActorUnavailableError:
                self._closing.wait(0.1)
            except Exception:  # ActorDiedError, GetTimeoutError: not restartable
                return None
        return None

    def _exited(self) -> list[tuple[str, int, Path]]:
        return [(node, 1, Path(self.actor_info.get(node, {}).get("log", "?"))) for node, _ in self._dead]

    def _watch_workers(self, period_s: float = 0.2) -> None:
        return  # the per-actor watchers do this job

    def node_records(self) -> dict[str, dict[str, Any]]:
        records = {}
        for node, info in self.actor_info.items():
            records[node] = {
                "host": self.host_of(node),
                "launcher": "ray",
                "ray_node_id": info["node_id"],
                "actor_id": info["actor_id"],
                "pid": info["pid"],
                "log": info["log"],
                "layers": list(self.config.placement.ranges[node]),
            }
        return records

    def close(self, timeout_s: float = 20.0) -> None:
        import ray

        super().close(timeout_s)  # `shutdown` to every worker; then no actor is left alive
        for actor in self.actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        for thread in self._watchers:
            thread.join(timeout=5)
