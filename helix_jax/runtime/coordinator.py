"""The coordinator: source and sink of every request's flow (placement -> scheduler -> runtime).

Sockets (all bound to free ports unless told otherwise; linger 0):
* client ROUTER: `generate` / `cancel` / `info` / `stats` in; `token` / `done` / `error` /
  `info_reply` / `stats_reply` (`serving_stats()`: load, per-node KV and health, readiness) out.
* control ROUTER: workers' `register` / `ready` / `failed` in; `assign` / `shutdown` out.
* data PULL: last stages' `sampled` tokens in. One PUSH per worker carries `step` (token ids
  for the route's first hop) and `free` (release a finished request's KV) out.

The loop, one thread, one zmq.Poller (timers only under --emulate):

1. Join: each worker registers its node name and data endpoint. A node not in the placement,
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
6. Failures: a serving worker sends `heartbeat` every `wire.HEARTBEAT_INTERVAL_S`. A node is
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
import dataclasses
import functools
import itertools
import logging
import math
import os
import threading
import time
from typing import Any, Callable

import numpy as np
import zmq

from helix_jax.errors import HelixError, ProtocolError, RequestError
from helix_jax.modelconfig import ModelConfig
from helix_jax.placement import Placement
from helix_jax.runtime import security, wire
from helix_jax.runtime.emulation import DelayedSends, EmulationSpec, LinkPacer
from helix_jax.runtime.requests import LiveRequest, TextCodec, parse_generate, stop_ids_of
from helix_jax.scheduler import RequestSpec, Scheduler
from helix_jax.topology import COORDINATOR, Topology

logger = logging.getLogger(__name__)


def pruned_flows(placement: Placement, down: frozenset[str]) -> Placement:
    """The fallback re-plan without a solver: `placement` minus every flow edge that touches a
    node in `down` (objective: what still leaves the coordinator)."""
    flows = tuple(f for f in placement.flows if f.src not in down and f.dst not in down)
    value = sum(f.tokens_per_s for f in flows if f.src == COORDINATOR)
    return dataclasses.replace(placement, flows=flows, objective_tokens_per_s=value)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Everything a deployment is made of; the deploy command builds one."""

    topology: Topology
    placement: Placement
    model: ModelConfig  # the model the workers compute (topology.model or a --model stand-in)
    weights: str | None = None  # checkpoint directory; None: seeded random weights (tiny models)
    host: str = "127.0.0.1"  # address the coordinator binds and advertises
    client_port: int = 0  # 0: a free port
    control_port: int = 0
    emulation: EmulationSpec | None = None
    kv_tokens: int | None = None  # per-worker KV cache size in tokens (None: worker default)
    kv_layout: str | None = None  # "paged" | "contiguous" (None: the engine's default)
    max_batch: int | None = None  # per-worker decode batch cap (None: worker default)
    max_seq_len: int = 512
    queue_limit: int = 1000
    policy: str = "iwrr"
    seed: int = 0
    heartbeat_timeout_s: float = 10.0  # silence after which a serving worker is taken out of service
    # nodes out of service -> the placement with flows that avoid them (same ranges); deploy passes
    # helix_jax.solver.maxflow.survivor_flows (the survivors' max-flow). None: `pruned_flows`.
    flow_planner: Callable[[frozenset[str]], Placement] | None = None
    # CURVE keys of the deployment (deploy generates them); None: plain TCP, which is allowed
    # only when `host` is loopback (tests and local experiments)
    keys: security.DeploymentKeys | None = None

    @property
    def time_scale(self) -> float:
        return self.emulation.time_scale if self.emulation else 1.0


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
        self._wake_r, self._wake_w = os.pipe()
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
        self._ids = itertools.count()
        self._timers = DelayedSends()
        self._pacer = (LinkPacer(config.emulation.topology(), COORDINATOR, config.time_scale)
                       if config.emulation else None)
        self.peak_kv_used: dict[str, int] = {n: 0 for n in self.nodes}
        self.completed = 0
        self.rejected = 0
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

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> None:
        """The loop (module docstring, steps 1-5) until `stop()`; closes every socket after."""
        poller = zmq.Poller()
        for sock in (self._client, self._control, self._data):
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stopping:
                due = self._timers.next_due
                if self.scheduler is not None:  # look for silent workers twice per heartbeat
                    check = time.perf_counter() + wire.HEARTBEAT_INTERVAL_S / 2
                    due = check if due is None else min(due, check)
                timeout_ms = None if due is None else math.ceil(max(0.0, (due - time.perf_counter()) * 1000.0))
                events = dict(poller.poll(timeout_ms))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                while self._reported:
                    self._node_down(*self._reported.popleft())
                self._check_heartbeats()
                secure = self.keys is not None
                if self._control in events:
                    wire.drain(self._control, self._on_control, routed=True, secure=secure)
                if self._data in events:
                    wire.drain(self._data, lambda _i, m: self._on_data(m), secure=secure)
                if self._client in events:
                    wire.drain(self._client, self._on_client, routed=True, on_reject=self._reject_client)
                self._timers.fire(time.perf_counter(), self._push_now)
        finally:
            self._close()

    def stop(self) -> None:
        """Ask `run()` to shut the workers down and return (thread-safe, idempotent)."""
        if not self._stopping:
            self._stopping = True
            os.write(self._wake_w, b"s")

    def report_node_down(self, node: str, reason: str) -> None:
        """Take a node out of service from another thread (the deployment saw its process
        exit); thread-safe, acted on by the loop (step 6)."""
        if not self._stopping:
            self._reported.append((node, reason))
            os.write(self._wake_w, b"d")

    def _close(self) -> None:
        for identity in self._identities.values():
            try:
                wire.send(self._control, wire.make("shutdown"), identity)
            except zmq.ZMQError:
                pass
        self._control.close(linger=2000)  # the shutdown frames must leave; nothing else waits
        for sock in (self._client, self._data, *self._push.values()):
            sock.close(linger=0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def stats(self) -> dict[str, Any]:
        sched = self.scheduler
        return {"budgets": dict(self._budgets), "peak_kv_used": dict(self.peak_kv_used),
                "completed": self.completed, "rejected": self.rejected, "peak_queued": self.peak_queued,
                "resumed": self.resumed, "down_nodes": dict(self.down_nodes), "rejoined": self.rejoined,
                "flow_tokens_per_s": self.flow_tokens_per_s,
                "queued": sched.queue_length if sched else len(self._early),
                "in_flight": sched.in_flight if sched else 0}

    def serving_stats(self) -> dict[str, Any]:
        """`stats()` plus what an operator watches (the `stats` request's reply): requests
        running / waiting, per node KV token-layers used and budget, planned flow, in service
        (0/1) and mean step time (seconds on the deployment's clock, None before any step),
        the max-flow of the nodes in service, and readiness (every layer covered by a node in
        service) with the reason when not ready."""
        sched, cfg = self.scheduler, self.config
        flows = sched.placement if sched else cfg.placement
        nodes = {}
        for node in self.nodes:
            step = self.step_s.get(node)
            nodes[node] = {"kv_used_token_layers": sched.ledger.used(node) if sched else 0,
                           "kv_budget_token_layers": self._budgets.get(node, 0),
                           "flow_tokens_per_s": 0.0 if node in self.down_nodes else flows.node_flow(node),
                           "in_service": int(sched is not None and node not in self.down_nodes),
                           "step_s": None if step is None else step / cfg.time_scale}
        ready, reason = self._readiness()
        return {**self.stats(), "running": sched.in_flight if sched else 0,
                "waiting": sched.queue_length if sched else len(self._early), "nodes": nodes,
                "max_flow_tokens_per_s": self.flow_tokens_per_s, "ready": ready, "reason": reason,
                "model": cfg.model.name, "max_seq_len": cfg.max_seq_len, "time_scale": cfg.time_scale}

    def _readiness(self) -> tuple[bool, str | None]:
        if self.failure:
            return False, self.failure
        if self.scheduler is None:
            return False, f"warming up: {len(self._budgets)} of {len(self.nodes)} workers ready"
        uncovered = [layer for layer in range(self.config.placement.num_layers)
                     if not any(s <= layer < e for n, (s, e) in self.config.placement.ranges.items()
                                if n not in self.down_nodes)]
        if uncovered:
            down = "; ".join(f"{n}: {why}" for n, why in sorted(self.down_nodes.items()))
            return False, (f"layers {uncovered[0]}-{uncovered[-1]} have no node in service "
                           f"(out of service: {down})")
        return True, None

    @property
    def worker_data_endpoints(self) -> dict[str, str]:
        """node -> the data endpoint its worker registered."""
        return dict(self._data_endpoints)

    # ---------------------------------------------------------------- socket plumbing
    def _reject_client(self, identity: bytes | None, msg: wire.Message | None, exc: HelixError) -> None:
        if identity is not None:
            self._reply_error(identity, msg.get("request_id") if msg is not None else None, exc)

    def _reply_error(self, identity: bytes, client_rid: str | None, exc: HelixError) -> None:
        self.rejected += 1
        wire.send(self._client, wire.make("error", request_id=client_rid if isinstance(client_rid, str) else None,
                                          error=type(exc).__name__, message=str(exc)), identity)

    def _send_data(self, node: str, msg: wire.Message, num_tokens: int = 1) -> None:
        if self._pacer is None:
            self._push_now(node, msg)
        else:
            self._timers.push(self._pacer.deliver_at(node, num_tokens, time.perf_counter()), node, msg)

    def _push_now(self, node: str, msg: wire.Message) -> None:
        sock = self._push.get(node)
        if sock is not None:  # None: the node went out of service since the send was paced
            wire.send(sock, msg)

    # ---------------------------------------------------------------- 1-2: join and warm-up
    def _on_control(self, identity: bytes | None, msg: wire.Message) -> None:
        assert identity is not None
        node = msg.get("node")
        if self.keys is not None and msg.kind != "shutdown" and self.keys.node_of(msg.sender) != node:
            raise ProtocolError(f"{msg.kind} for node {node!r} signed by the key of "
                                f"{self.keys.node_of(msg.sender)!r}: dropped")
        if node in self._identities and self._identities[node] == identity:
            self._last_heard[node] = time.perf_counter()
            if msg.get("mean_step_s") is not None:
                self.step_s[node] = float(msg["mean_step_s"])
        if msg.kind == "heartbeat":
            if node not in self._identities:
                raise ProtocolError(f"heartbeat from an unknown worker {node!r}")
            if self._identities[node] != identity or (node in self.down_nodes and node not in self._rejoining):
                # a worker we gave up on (or replaced since) woke up: its requests live elsewhere
                wire.send(self._control, wire.make("shutdown"), identity)
            return
        if msg.kind == "register":
            if node not in self.config.placement.ranges:
                reason = f"node {node!r} holds no layers in this placement (placed nodes: {', '.join(self.nodes)})"
                wire.send(self._control, wire.make("failed", node=node, message=reason), identity)
                raise ProtocolError(reason)
            rejoin = node in self.down_nodes and node not in self._rejoining
            if node in self._identities and self._identities[node] != identity and not rejoin:
                wire.send(self._control, wire.make("failed", node=node, message=f"node {node!r} already joined"),
                          identity)
                return
            old = self._push.pop(node, None)
            if old is not None:
                old.close(linger=0)
            self._identities[node] = identity
            self._data_endpoints[node] = msg["data_endpoint"]
            push = wire.configure(self._ctx.socket(zmq.PUSH))
            if self.keys is not None:
                security.curve_client(push, self.keys.coordinator, self.keys.nodes[node].public)
            push.connect(msg["data_endpoint"])
            self._push[node] = push
            logger.info("worker %s registered (pid %s on %s)", node, msg["pid"], msg["host"])
            self.phases[node] = ("registered", time.monotonic())
            if rejoin:
                self._rejoining.add(node)
                self._assign(node)
                for peer in self.nodes:  # whoever hands off to it must reconnect
                    if peer != node and peer in self._push and self.config.placement.can_hand_off(peer, node):
                        wire.send(self._control, wire.make("peer", node=node, data_endpoint=msg["data_endpoint"]),
                                  self._identities[peer])
            elif len(self._identities) == len(self.nodes):
                self._assign_all()
        elif msg.kind == "progress" and self._identities.get(node) == identity:
            self.phases[node] = (msg["phase"], time.monotonic())
        elif msg.kind == "ready" and self._identities.get(node) == identity:
            self.phases[node] = ("ready", time.monotonic())
            self._budgets[node] = msg["kv_capacity_token_layers"]
            if msg.get("kv_page_tokens"):
                self._page_tokens[node] = msg["kv_page_tokens"]
            self.warmup_s[node] = float(msg["warmup_s"])
            logger.info("worker %s ready: KV %d token-layers, warm-up %.1f s", node,
                        msg["kv_capacity_token_layers"], msg["warmup_s"])
            if len(self._budgets) == len(self.nodes) and self.scheduler is None:
                self._start_serving()
            elif node in self._rejoining:
                self._rejoin(node)
        elif msg.kind == "failed" and self._identities.get(node) == identity:
            if self.scheduler is not None:  # serving: the others carry on without it
                self._rejoining.discard(node)  # a replacement that failed to load may be retried
                self._node_down(node, f"worker reported failure: {msg['message']}")
                return
            self.failed_node = (node, msg.get("phase") or "load", msg["message"])
            self.failure = f"worker {node} failed: {msg['message']}"
            logger.info(self.failure)  # the deployment reports it (one message naming step and node)
            self.ready_event.set()
        else:
            raise ProtocolError(f"unexpected {msg.kind!r} on the control socket")

    def _assign_all(self) -> None:
        for node in self.nodes:
            self._assign(node)

    def _assign(self, node: str) -> None:
        cfg = self.config
        start, end = cfg.placement.ranges[node]
        neighbours = {n: self._data_endpoints[n] for n in self.nodes
                      if n != node and cfg.placement.can_hand_off(node, n)}
        secured: dict[str, Any] = {}
        if self.keys is not None:  # whom to encrypt to, and whom to admit on the data socket
            secured = dict(upstream=[n for n in self.nodes if n != node and cfg.placement.can_hand_off(n, node)])
        wire.send(self._control, wire.make(
            "assign", node=node, start_layer=start, end_layer=end, model=cfg.model.to_dict(),
            neighbours=neighbours, coordinator_data=self.data_endpoint, weights=cfg.weights,
            emulate=cfg.emulation.to_wire() if cfg.emulation else None, kv_tokens=cfg.kv_tokens,
            max_batch=cfg.max_batch, max_seq_len=cfg.max_seq_len, seed=cfg.seed, kv_layout=cfg.kv_layout,
            prompt_tokens_per_step=self._prompt_budget(node), **secured), self._identities[node])

    def _prompt_budget(self, node: str) -> int | None:
        """The node's prompt tokens per step: the cost model's, which the simulator uses."""
        from helix_jax.costmodel import CostModel

        try:
            return CostModel(self.config.topology).max_prompt_tokens_per_step(self.config.topology.node(node).gpu)
        except HelixError as exc:
            logger.warning("no prompt budget for %s (%s): whole prompts per step", node, exc)
            return None

    def _start_serving(self) -> None:
        cfg = self.config
        self.scheduler = Scheduler(cfg.placement, self._budgets, policy=cfg.policy,
                                   queue_limit=cfg.queue_limit, seed=cfg.seed, kv_page_tokens=self._page_tokens)
        now = time.perf_counter()
        self._last_heard = {node: now for node in self.nodes}
        self.ready_event.set()
        early, self._early = self._early, []
        for identity, msg in early:
            try:
                self._on_client(identity, msg)
            except HelixError as exc:
                self._reply_error(identity, msg.get("request_id"), exc)

    # ---------------------------------------------------------------- 3-4: requests
    def _on_client(self, identity: bytes | None, msg: wire.Message) -> None:
        assert identity is not None
        if msg.kind == "info":
            wire.send(self._client, wire.make(
                "info_reply", request_id=msg["request_id"], model=self.config.model.name,
                num_layers=self.config.model.num_layers, vocab_size=self.config.model.vocab_size,
                time_scale=self.config.time_scale, nodes=list(self.nodes),
                max_seq_len=self.config.max_seq_len), identity)
        elif msg.kind == "stats":
            wire.send(self._client, wire.make("stats_reply", request_id=msg["request_id"],
                                              stats=self.serving_stats()), identity)
        elif msg.kind == "cancel":
            rid = self._by_client.get((identity, msg["request_id"]))
            if rid is not None:
                self._finish(self._live[rid], "cancelled", notify=False)
        elif msg.kind == "generate":
            if self.scheduler is None:
                self._early.append((identity, msg))
                return
            key = (identity, msg["request_id"])
            if key in self._by_client:
                raise ProtocolError(f"request id {msg['request_id']!r} is already in flight")
            req = parse_generate(msg, identity, f"r{next(self._ids)}", self.config.model, self.codec,
                                 self.config.max_seq_len)
            self.scheduler.submit(RequestSpec(req.request_id, len(req.prompt_ids), req.max_tokens))
            self._live[req.request_id] = req
            self._by_client[key] = req.request_id
            self._admit()
            self.peak_queued = max(self.peak_queued, self.scheduler.queue_length)
        else:
            raise ProtocolError(f"unexpected {msg.kind!r} on the client socket")

    def _admit(self) -> None:
        assert self.scheduler is not None
        for adm in self.scheduler.admit_ready():
            req = self._live[adm.request_id]
            req.set_route(adm.route)
            if req.admitted_at is None:
                req.admitted_at = time.perf_counter()
            for hop in adm.route:
                used = self.scheduler.ledger.used(hop.node)
                self.peak_kv_used[hop.node] = max(self.peak_kv_used[hop.node], used)
            # a resumed request prefills its prompt and every token already streamed
            ids = np.asarray([*req.prompt_ids, *req.output_ids], dtype=np.int32)
            self._send_step(req, ids, position=0, index=len(req.output_ids), kv_tokens=adm.spec.kv_tokens)

    def _send_step(self, req: LiveRequest, ids: np.ndarray, position: int, index: int, **extra: Any) -> None:
        if position == 0:  # checked once at admission (parse_generate); each hop keeps it with the request
            extra["sampling"] = req.sampling_wire
        msg = wire.make("step", [ids], request_id=req.request_id, route=req.route_wire, hop=0,
                        position=position, index=index, **extra)
        assert req.route is not None
        self._send_data(req.route[0].node, msg, len(ids))

    def _on_data(self, msg: wire.Message) -> None:
        if msg.kind != "sampled":
            raise ProtocolError(f"unexpected {msg.kind!r} on the coordinator's data socket")
        req = self._live.get(msg["request_id"])
        if req is None or msg["index"] != len(req.output_ids):
            return  # cancelled meanwhile, or a stray duplicate
        last = req.route[-1].node if req.route else None
        if msg["node"] != last or (self.keys is not None and self.keys.node_of(msg.sender) != last):
            who = self.keys.node_of(msg.sender) if self.keys is not None else msg["node"]
            raise ProtocolError(f"sampled token of {msg['request_id']} from {who!r}, not from its last hop "
                                f"{last!r}: dropped")
        delta, reason = req.add_token(msg["token_id"], self.codec, self.stop_ids)
        wire.send(self._client, wire.make("token", request_id=req.client_request_id,
                                          index=len(req.output_ids) - 1, token_id=msg["token_id"],
                                          text=delta), req.identity)
        if reason is not None:
            self._finish(req, reason, notify=True)
            return
        assert self.scheduler is not None
        self.scheduler.on_decode_token(req.request_id)
        position = len(req.prompt_ids) + len(req.output_ids) - 1
        self._send_step(req, np.asarray([msg["token_id"]], dtype=np.int32), position, len(req.output_ids))

    def _finish(self, req: LiveRequest, reason: str, notify: bool) -> None:
        assert self.scheduler is not None
        self._live.pop(req.request_id, None)
        self._by_client.pop((req.identity, req.client_request_id), None)
        self._free_hops(req)
        self.scheduler.finish(req.request_id)
        if notify:
            self.completed += 1
            ttft = (req.first_token_at - req.submitted_at) if req.first_token_at else 0.0
            queued = ((req.admitted_at or req.submitted_at) - req.submitted_at) / self.config.time_scale
            wire.send(self._client, wire.make(
                "done", request_id=req.client_request_id, ids=list(req.output_ids), text=req.text,
                finish_reason=reason, prompt_tokens=len(req.prompt_ids), time_scale=self.config.time_scale,
                server_ttft_s=ttft / self.config.time_scale, queue_s=queued, route=req.route_wire),
                req.identity)
        self._admit()

    # ---------------------------------------------------------------- 6: failures
    def _check_heartbeats(self) -> None:
        now = time.perf_counter()
        if self.scheduler is None or now < self._next_heartbeat_check:
            return  # the loop wakes per message batch; twice per heartbeat period is enough
        self._next_heartbeat_check = now + wire.HEARTBEAT_INTERVAL_S / 2
        limit = self.config.heartbeat_timeout_s
        for node, heard in list(self._last_heard.items()):
            if node not in self.down_nodes and now - heard > limit:
                self._node_down(node, f"no heartbeat for {now - heard:.1f} s (limit {limit:g} s)")

    def _node_down(self, node: str, reason: str) -> None:
        """Step 6: take `node` out of service and resume (or fail) the requests it carried."""
        if self.scheduler is None or node in self.down_nodes or node not in self.config.placement.ranges:
            return
        self.down_nodes[node] = reason
        logger.error("node %s is out of service: %s", node, reason)
        push = self._push.pop(node, None)
        if push is not None:
            push.close(linger=0)
        released = self.scheduler.fail_node(node)
        self._reflow(set(self.down_nodes))

        def unroutable(why: object) -> RequestError:
            return RequestError(f"node {node} went out of service ({reason}) and no surviving route "
                                f"can hold this request: {why}")

        for spec in reversed(released):  # resumed at the head of the queue, in admission order
            req = self._live.pop(spec.request_id)
            self._free_hops(req)
            req.route, req.route_wire = None, []
            req.request_id = f"r{next(self._ids)}"
            self._live[req.request_id] = req
            self._by_client[(req.identity, req.client_request_id)] = req.request_id
            resume = RequestSpec(req.request_id, len(req.prompt_ids) + len(req.output_ids),
                                 req.max_tokens - len(req.output_ids))
            try:
                self.scheduler.submit(resume, front=True)
                self.resumed += 1
            except HelixError as exc:
                self._fail(req, unroutable(exc))
        for spec, why in self.scheduler.drop_unroutable():
            self._fail(self._live[spec.request_id], unroutable(why))
        self._admit()

    def _rejoin(self, node: str) -> None:
        """A fresh worker of a node out of service is warm: back in service, flows recomputed."""
        assert self.scheduler is not None
        self._rejoining.discard(node)
        self.scheduler.restore_node(node, self._budgets[node])
        self._reflow(set(self.down_nodes) - {node})
        self._last_heard[node] = time.perf_counter()
        self.rejoined += 1
        del self.down_nodes[node]  # last: stats() readers see the node back with its flows
        logger.warning("node %s is back in service", node)
        self._admit()

    def _reflow(self, down: set[str]) -> None:
        """Point the scheduler at flows that avoid the nodes in `down` (same ranges): the
        config's `flow_planner` (the survivors' max-flow), or else the old flows minus every
        edge that touches a node in `down`."""
        old = self.config.placement
        try:
            planner = self.config.flow_planner or functools.partial(pruned_flows, old)
            new = planner(frozenset(down))
            value = new.objective_tokens_per_s
            self.flow_tokens_per_s = value
            if value <= 0:
                return  # no route is left; the scheduler already refuses everything
            assert self.scheduler is not None
            self.scheduler.reflow(new)
        except HelixError as exc:
            logger.error("could not recompute flows without %s: %s", ", ".join(sorted(down)), exc)
            return
        logger.warning("flows recomputed without %s: %.1f tokens/s (placement: %.1f)",
                       ", ".join(sorted(down)) or "no node", value, old.objective_tokens_per_s)

    def _free_hops(self, req: LiveRequest) -> None:
        """Release a request's KV slot on every live hop of its route."""
        for hop in req.route or ():
            if hop.node in self._push:
                self._send_data(hop.node, wire.make("free", request_id=req.request_id), 0)

    def _fail(self, req: LiveRequest, exc: HelixError) -> None:
        """End a request with an `error` to its client (its KV is already released)."""
        self._live.pop(req.request_id, None)
        self._by_client.pop((req.identity, req.client_request_id), None)
        self._reply_error(req.identity, req.client_request_id, exc)
