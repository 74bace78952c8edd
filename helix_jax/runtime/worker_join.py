"""A worker's sockets and its join: steps 1-2 of the worker loop (worker.py).

Sits in the runtime (placement -> coordinator -> **workers**): `WorkerJoin` opens the
sockets (CURVE keys when given), registers with the coordinator, waits for `assign`, builds
the StageHost of the assigned layer range (weights, compile, emulated pacing) and connects
one PUSH per neighbour; `Worker` (worker.py) adds the serve loop. Touches the wire format,
security, emulation and the stage host; never the scheduler or the model directly.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import time

import zmq

from helix_jax.errors import ConfigError, ProtocolError
from helix_jax.runtime import security, wire
from helix_jax.runtime.emulation import ComputePacer, DelayedSends, EmulationSpec, LinkPacer
from helix_jax.runtime.health import DropCounter
from helix_jax.runtime.runner import RunnerFactory, engine_runner
from helix_jax.runtime.stage_host import StageHost
from helix_jax.topology import COORDINATOR

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 900.0


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    coordinator: str  # control endpoint, tcp://HOST:PORT
    node: str
    bind_host: str = "127.0.0.1"  # address the data socket binds ("0.0.0.0" for remote peers)
    advertise_host: str | None = None  # address peers use to reach it (default: bind_host)
    parent_pid: int | None = None  # exit when this process dies (deploy's children)
    keys: security.WorkerKeys | None = None  # CURVE keys (--keys FILE); None: plain TCP, loopback only


class WorkerJoin:
    """A worker's sockets, state and join (steps 1-2); the serve loop is `Worker`'s."""

    def __init__(self, options: WorkerOptions, runner_factory: RunnerFactory = engine_runner) -> None:
        self.options = options
        self._runner_factory = runner_factory  # builds what runs the layers (runner.py)
        keys = self.keys = options.keys
        self._ctx = zmq.Context()  # its own: its ZAP handler serves this worker's data socket only
        self._auth: security.Authenticator | None = None
        self._control = wire.configure(self._ctx.socket(zmq.DEALER))
        self._data = wire.configure(self._ctx.socket(zmq.PULL))
        self._public_keys: dict[str, str] = {}  # node (or COORDINATOR) -> public key, from the keys file
        self._upstream: set[str] = {COORDINATOR}  # who may send `step` here (from `assign`)
        if keys is None:
            security.check_insecure(
                {
                    "the coordinator": security.host_of(options.coordinator),
                    "--bind-host": options.bind_host,
                    "--advertise-host": options.advertise_host,
                },
                "a worker without --keys (plain TCP)",
            )
        else:
            if keys.node != options.node:
                raise ConfigError(f"the keys file is for node {keys.node!r}, not {options.node!r}")
            self._public_keys = {**keys.peers, COORDINATOR: keys.coordinator_public}
            self._auth = security.Authenticator(self._ctx)  # the deployment's keys; `_on_data` checks who
            self._auth.allow(security.DATA, self._public_keys.values())
            security.curve_client(self._control, keys.own, keys.coordinator_public)
            security.curve_server(self._data, keys.own, security.DATA)
        # a refused key shows up as a failed handshake, not as a message: watch for it while joining
        self._monitor = self._control.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self._control.connect(options.coordinator)
        endpoint = wire.bind_free_port(self._data, options.bind_host, 0)
        port = endpoint.rsplit(":", 1)[1]
        self.data_endpoint = f"tcp://{options.advertise_host or options.bind_host}:{port}"
        self._push: dict[str, zmq.Socket] = {}
        self._endpoints: dict[str, str] = {}
        self.host: StageHost | None = None
        self._freed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._timers = DelayedSends()
        self._busy_until = 0.0
        self._held: list[tuple[str, wire.Message, int]] = []  # results waiting for _busy_until
        self._compute: ComputePacer | None = None
        self._links: LinkPacer | None = None
        self.time_scale = 1.0  # emulated seconds run this many times slower (leases stretch with them)
        self._running = True
        self._phase = "load"  # the warm-up phase in progress (reported to the coordinator)
        self._stalled = False
        self._gather_s = 0.0  # assign's gather_s: how long a step waits for the requests that entered here (worker.py)
        self._gather_since: float | None = None  # when the step now waiting for them could first have run
        self.steps_run = 0
        self.heartbeats_sent = 0  # while serving (tests wait on it instead of the clock)
        self.real_busy_s = self.emulated_busy_s = 0.0
        self.overruns = 0
        self._reported_steps, self._reported_busy_s = 0, 0.0  # at the last heartbeat
        self.drops = DropCounter()  # messages dropped, by reason; each heartbeat reports the new ones

    # ------------------------------------------------------------------ 1-2: join
    def _close(self) -> None:
        """Close every socket (linger 0), the authenticator and the context."""
        time.sleep(0.05)
        self._stop_monitor()
        for sock in (self._control, self._data, *self._push.values()):
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def _stop_monitor(self) -> None:
        if not self._monitor.closed:
            self._control.disable_monitor()
            self._monitor.close(linger=0)

    def _join(self) -> wire.Message | None:
        try:
            return self._await_assign()
        finally:
            self._stop_monitor()  # joined (or gave up): handshakes no longer matter

    def _await_assign(self) -> wire.Message | None:
        wire.send(
            self._control,
            wire.make("register", node=self.options.node, data_endpoint=self.data_endpoint, pid=os.getpid(), host=socket.gethostname()),
        )
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        poller = zmq.Poller()
        poller.register(self._control, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while time.monotonic() < deadline and self._parent_alive():
            events = dict(poller.poll(1000))
            if self._monitor in events:
                logger.error(
                    "coordinator %s refused the CURVE handshake of node %s: wrong keys file, or the deployment was restarted with new keys",
                    self.options.coordinator,
                    self.options.node,
                )
                return None
            if self._control not in events:
                continue
            try:
                _, msg = wire.recv(self._control)
            except ProtocolError as exc:
                logger.warning("dropped a malformed control message: %s", exc)
                continue
            if msg.kind == "assign" and msg["node"] == self.options.node:
                return msg
            if msg.kind in ("failed", "shutdown"):
                logger.error("coordinator refused node %s: %s", self.options.node, msg.get("message", "shutdown"))
                return None
        logger.error("no assignment from %s", self.options.coordinator)
        return None

    def _warm_up(self, assign: wire.Message) -> None:
        started = time.perf_counter()
        emulation = EmulationSpec.from_wire(assign["emulate"]) if assign.get("emulate") else None
        if emulation is not None:
            topology = emulation.topology()
            self._compute = ComputePacer(topology, self.options.node, emulation.time_scale, emulation.kv_scale, emulation.workload_shape())
            self._links = LinkPacer(topology, self.options.node, emulation.time_scale)
            self.time_scale = max(1.0, emulation.time_scale)
        self._report_phase("load")
        self.host = StageHost.build(assign, self._compute, lambda: self._report_phase("compile"), self._runner_factory)
        self._gather_s = float(assign.get("gather_s", 0.0))
        self._endpoints = {**assign["neighbours"], COORDINATOR: assign["coordinator_data"]}
        self._upstream.update(str(n) for n in assign.get("upstream") or ())
        for name, endpoint in self._endpoints.items():
            self._push[name] = self._connect_push(name, endpoint)
        warmup_s = time.perf_counter() - started
        wire.send(
            self._control,
            wire.make(
                "ready",
                node=self.options.node,
                kv_capacity_token_layers=self.host.kv_budget_token_layers,
                kv_page_tokens=self.host.engine.kv_page_tokens,
                warmup_s=warmup_s,
            ),
        )
        logger.info("worker %s ready in %.1f s: layers [%d, %d)", self.options.node, warmup_s, self.host.start_layer, self.host.end_layer)

    def _report_phase(self, phase: str) -> None:
        self._phase = phase
        wire.send(self._control, wire.make("progress", node=self.options.node, phase=phase))

    def _connect_push(self, name: str, endpoint: str) -> zmq.Socket:
        push = wire.configure(self._ctx.socket(zmq.PUSH))
        if self.keys is not None:
            if name not in self._public_keys:
                raise ProtocolError(f"the keys file has no public key for {name!r}")
            security.curve_client(push, self.keys.own, self._public_keys[name])
        push.connect(endpoint)
        return push

    def _sender_node(self, msg: wire.Message) -> str:
        """The node (or COORDINATOR) whose key signed `msg` (CURVE on)."""
        return next((name for name, key in self._public_keys.items() if key == msg.sender), f"unknown key {str(msg.sender)[:8]}")

    def _parent_alive(self) -> bool:
        return self.options.parent_pid is None or os.getppid() == self.options.parent_pid
