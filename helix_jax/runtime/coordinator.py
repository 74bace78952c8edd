"""The coordinator: source and sink of every request's flow (placement -> scheduler -> runtime).

Sockets (all bound to free ports unless told otherwise; linger 0):
* client ROUTER: `generate` / `cancel` / `info` / `stats` in; `token` / `done` / `error` /
  `info_reply` / `stats_reply` (`serving_stats()`: load, per-node KV and health, readiness) out.
* control ROUTER: workers' `register` / `ready` / `failed` in; `assign` / `shutdown` out.
* data PULL: last stages' `sampled` tokens in. One PUSH per worker carries `step` (token ids
  for the route's first hop) and `free` (release a finished request's KV) out.

The loop, one thread, one zmq.Poller (timers only under --emulate):

1. Join (coordinator_control.py, one handler per message kind): each worker registers
   its node name and data endpoint. A node not in the placement,
   or registered twice, is told `failed`. Once every placed node has registered, each gets
   `assign`: its layer range, the model and weights source, its neighbours' data endpoints,
   the coordinator's data endpoint and the emulation spec.
2. Warm-up: workers load, compile their buckets and answer `ready` with their real KV
   capacity in token-layers (and their KV page size). With all ready, the Scheduler is built
   with those budgets, its ledger rounding reservations to each node's pages exactly as the
   node's page pool allocates (`ready_event` is set); client requests that arrived earlier
   wait until then. A request's first step carries its reservation (`kv_tokens`).
3. Admission: a `generate` is validated (`RequestError` back at once if malformed), submitted
   to the scheduler (`OverloadedError` back if the queue is full) and, whenever
   `admit_ready()` returns it, its prompt goes to the first hop of its route as a `step`.
4. Decode: each `sampled` token is streamed to the client as `token`; unless a stop condition
   holds (eos, stop string, max_tokens) the token is sent as the next `step` along the same
   route (`on_decode_token` adds its load). On finish: `done` to the client, `free` to every
   hop, `scheduler.finish` releases the KV and step 3 admits whoever waits.
5. Anything malformed on any socket is logged and dropped (a client gets an `error`); a
   `cancel` ends its request like step 4. `stop()` sends `shutdown` to every worker.
6. Failures (failover.py): a serving worker sends `heartbeat` every `wire.HEARTBEAT_INTERVAL_S`. A node is
   taken out of service when it reports `failed`, when nothing is heard from it for
   `heartbeat_timeout_s`, or when the deployment sees its process exit (`report_node_down`).
   The flows are recomputed over the nodes still in service (`flow_planner`: same layer
   ranges, their max-flow, so new requests spread by what the survivors can carry), and every
   request routed through it is resumed on a surviving route, first in the queue: its KV on
   the surviving hops is freed, and under a fresh internal id its prompt plus the tokens
   already streamed are prefilled again, so the client's stream continues where it stopped
   (sampling depends only on seed and position, so the tokens are the ones an undisturbed run
   gives, up to rounding differences between a prefill and a decode step). A request that no
   surviving route can hold, queued or in flight, gets one `error` naming the nodes out of
   service, and so does every later request. A worker of a node out of service that speaks
   again (say, resumed after a pause) is told `shutdown`; a fresh worker that registers for it
   rejoins: it gets `assign`, its neighbours get `peer` (its new data endpoint), and once it is
   `ready` the node is back in service and the flows are recomputed with it.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time
from typing import Any

import zmq

from helix_jax.errors import HelixError
from helix_jax.runtime import coordinator_control as control
from helix_jax.runtime import coordinator_requests as requests
from helix_jax.runtime import coordinator_stats, failover, security, wire
from helix_jax.runtime.emulation import DelayedSends, LinkPacer
from helix_jax.runtime.failover import pruned_flows
from helix_jax.runtime.health import COORDINATOR_NODE, ServingHealth, drop_reason
from helix_jax.runtime.requests import LiveRequest, TextCodec, stop_ids_of
from helix_jax.runtime.serve_config import ServeConfig
from helix_jax.runtime.waker import Waker
from helix_jax.scheduler import Scheduler
from helix_jax.topology import COORDINATOR

logger = logging.getLogger(__name__)

__all__ = ["Coordinator", "ServeConfig", "pruned_flows"]  # ServeConfig and pruned_flows live in serve_config.py, failover.py


class Coordinator:
    """Owns the sockets and the request table; `run()` is the loop of the module docstring."""

    def __init__(self, config: ServeConfig, codec: TextCodec) -> None:
        if config.keys is None:
            security.check_insecure({"the coordinator": config.host}, "a deployment without keys (plain TCP)")
        self.config, self.codec = config, codec
        self.stop_ids = stop_ids_of(codec, config.model)
        self.nodes = tuple(sorted(config.placement.ranges))
        self._ctx = zmq.Context()  # its own: its ZAP handler must not serve other sockets
        host = config.host
        self.keys = keys = config.keys
        self._auth: security.Authenticator | None = None
        self._client = wire.configure(self._ctx.socket(zmq.ROUTER))
        self._control = wire.configure(self._ctx.socket(zmq.ROUTER))
        self._data = wire.configure(self._ctx.socket(zmq.PULL))
        if keys is not None:
            self._auth = security.Authenticator(self._ctx)
            self._auth.allow(security.CLIENT, (k.public for k in keys.clients))
            for domain, sock in ((security.CONTROL, self._control), (security.DATA, self._data)):
                self._auth.allow(domain, (k.public for k in keys.nodes.values()))
                security.curve_server(sock, keys.coordinator, domain)
            security.curve_server(self._client, keys.coordinator, security.CLIENT)
        try:
            self.client_endpoint = wire.bind_free_port(self._client, host, config.client_port)
            self.control_endpoint = wire.bind_free_port(self._control, host, config.control_port)
            self.data_endpoint = wire.bind_free_port(self._data, host, 0)
        except zmq.ZMQError:  # e.g. a port in use: release everything before the caller reports it
            for sock in (self._client, self._control, self._data):
                sock.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self._ctx.term()
            raise
        self._waker = Waker("coordinator")
        self._stopping = False
        self.ready_event = threading.Event()
        self.failure: str | None = None
        self.failed_node: tuple[str, str, str] | None = None  # (node, phase, message) of a start-up failure
        self.phases: dict[str, tuple[str, float]] = {}  # node -> (registered|load|compile|ready, since)
        self._identities: dict[str, bytes] = {}  # node -> control identity
        self._data_endpoints: dict[str, str] = {}
        self._push: dict[str, zmq.Socket] = {}
        self._budgets: dict[str, int] = {}
        self._page_tokens: dict[str, int] = {}  # node -> KV page size its worker reported
        self.warmup_s: dict[str, float] = {}
        self.scheduler: Scheduler | None = None
        self._early: list[tuple[bytes, wire.Message]] = []
        self._live: dict[str, LiveRequest] = {}
        self._by_client: dict[tuple[bytes, str], str] = {}
        self._waiting_by_client: dict[bytes, int] = {}  # client identity -> its requests never admitted yet
        self._timers = DelayedSends()
        self._pacer = LinkPacer(config.emulation.topology(), COORDINATOR, config.time_scale) if config.emulation else None
        self.peak_kv_used: dict[str, int] = {n: 0 for n in self.nodes}
        self.completed = 0
        self.rejected = 0
        self.dropped = 0  # data and control messages refused
        self.health = ServingHealth()  # drops by reason, containment failures, restarts (health.py)
        self.peak_queued = 0
        self.resumed = 0  # requests moved to a new route after a node failure
        self.flow_tokens_per_s = config.placement.objective_tokens_per_s  # of the nodes in service
        self.down_nodes: dict[str, str] = {}  # node -> why it is out of service
        self._rejoining: set[str] = set()  # down nodes whose fresh worker is warming up
        self.rejoined = 0
        self._last_heard: dict[str, float] = {}
        self._next_heartbeat_check = 0.0
        self._reported: collections.deque[tuple[str, str]] = collections.deque()  # from other threads
        self.step_s: dict[str, float] = {}  # node -> mean batch time of its last heartbeat period
        self._outbox: dict[str, list[wire.Message]] | None = None  # data sends of the loop's current iteration

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> None:
        """The loop (module docstring, steps 1-5) until `stop()`; closes every socket after."""
        poller = zmq.Poller()
        for sock in (self._client, self._control, self._data):
            poller.register(sock, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        try:
            while not self._stopping:
                due = self._timers.next_due
                if self.scheduler is not None:  # look for silent workers twice per heartbeat
                    check = time.perf_counter() + wire.HEARTBEAT_INTERVAL_S / 2
                    due = check if due is None else min(due, check)
                timeout_ms = None if due is None else math.ceil(max(0.0, (due - time.perf_counter()) * 1000.0))
                events = dict(poller.poll(timeout_ms))
                polled_at = time.perf_counter()  # every message that arrived by now is drained below
                self._outbox = {}  # data sent while handling these events leaves in one bundle per node
                if self._waker.fd in events:
                    self._waker.drain()
                while self._reported:
                    failover.node_down(self, *self._reported.popleft())
                secure = self.keys is not None
                if self._control in events:
                    wire.drain(
                        self._control, functools.partial(control.on_control, self), routed=True, secure=secure, on_reject=self._dropped
                    )
                if self._data in events:
                    wire.drain(self._data, lambda _i, m: requests.on_data(self, m), secure=secure, on_reject=self._dropped)
                if self._client in events:
                    wire.drain(self._client, functools.partial(requests.on_client, self), routed=True, on_reject=self._reject_client)
                # after the drain: a heartbeat that waited in the socket while the loop was busy
                # (a slow re-plan on a loaded machine) counts, so only true silence takes a node out
                failover.check_heartbeats(self, polled_at)
                self._timers.fire(time.perf_counter(), self._push_now)
                self._flush_outbox()
        except Exception as exc:  # the loop is the deployment: say why it ended, once, then end it
            logger.exception("the coordinator's loop failed; the deployment stops")
            self.failure = self.failure or f"the coordinator's loop failed: {type(exc).__name__}: {exc}"
            self._stopping = True
            raise
        finally:
            self._close()

    def stop(self) -> None:
        """Ask `run()` to shut the workers down and return (thread-safe, idempotent)."""
        if not self._stopping:
            self._stopping = True
            self._waker.wake(b"s")  # a no-op once the loop has closed

    def report_node_down(self, node: str, reason: str) -> None:
        """Take a node out of service from another thread (the deployment saw its process
        exit); thread-safe, acted on by the loop (step 6)."""
        if not self._stopping:
            self._reported.append((node, reason))
            self._waker.wake(b"d")

    def _close(self) -> None:
        gone = HelixError("the deployment is shutting down: this request was not finished")
        for req in list(self._live.values()):  # nobody waits for their timeout (issue 19)
            self._reply_error(req.identity, req.client_request_id, gone)
        for identity, msg in self._early:
            self._reply_error(identity, msg.get("request_id"), gone)
        for identity in self._identities.values():
            try:
                wire.send(self._control, wire.make("shutdown"), identity)
            except zmq.ZMQError:
                pass
        self._control.close(linger=2000)  # the shutdown frames must leave; nothing else waits
        for sock in (self._client, self._data, *self._push.values()):
            sock.close(linger=0)
        self._waker.close()
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def stats(self) -> dict[str, Any]:
        """Counters and load (coordinator_stats.py)."""
        return coordinator_stats.stats(self)

    def serving_stats(self) -> dict[str, Any]:
        """`stats()` plus per-node load, health and readiness: the `stats` request's reply
        (coordinator_stats.py)."""
        return coordinator_stats.serving_stats(self)

    @property
    def worker_data_endpoints(self) -> dict[str, str]:
        """node -> the data endpoint its worker registered."""
        return dict(self._data_endpoints)

    # ---------------------------------------------------------------- socket plumbing
    def _reject_client(self, identity: bytes | None, msg: wire.Message | None, exc: HelixError) -> None:
        if identity is not None:
            self._reply_error(identity, msg.get("request_id") if msg is not None else None, exc)

    def _dropped(self, _identity: bytes | None, _msg: wire.Message | None, exc: HelixError) -> None:
        self.dropped += 1  # a data or control message refused (malformed, forged, out of range); logged by wire.drain
        self.health.count_drop(COORDINATOR_NODE, drop_reason(exc))

    def _reply_error(self, identity: bytes, client_rid: str | None, exc: HelixError) -> None:
        self.rejected += 1
        wire.send(
            self._client,
            wire.make("error", request_id=client_rid if isinstance(client_rid, str) else None, error=type(exc).__name__, message=str(exc)),
            identity,
        )

    def _send_data(self, node: str, msg: wire.Message, num_tokens: int = 1) -> None:
        if self._pacer is None:
            self._push_now(node, msg)
        else:
            self._timers.push(self._pacer.deliver_at(node, num_tokens, time.perf_counter()), node, msg)

    def _push_now(self, node: str, msg: wire.Message) -> None:
        if self._outbox is not None:  # inside the loop: with the rest of this iteration's sends
            self._outbox.setdefault(node, []).append(msg)
        else:
            self._send(node, [msg])

    def _flush_outbox(self) -> None:
        """Send what this loop iteration queued: one bundle per node, so the tokens of a batch
        that came back together enter the first stage together (its next step takes them all)."""
        outbox, self._outbox = self._outbox, None
        for node, msgs in (outbox or {}).items():
            self._send(node, msgs)

    def _send(self, node: str, msgs: list[wire.Message]) -> None:
        sock = self._push.get(node)
        if sock is not None:  # None: the node went out of service since the send was queued or paced
            wire.send_many(sock, msgs)

    @staticmethod
    def _new_request_id() -> str:
        """An internal request id: random, so no peer can guess another client's (issue 19)."""
        return requests.new_request_id()
