"""The coordinator's control plane: workers join and warm up (its loop's steps 1-2).

Each worker registers its node name and data endpoint on the control socket. A node not in
the placement, or registered twice, is told `failed`. Once every placed node has registered,
each gets `assign`: its layer range, the model and weights source, its neighbours' data
endpoints, the coordinator's data endpoint and the emulation spec. Workers load, compile and
answer `ready` with their real KV capacity in token-layers (and their KV page size); with all
ready, the Scheduler is built with those budgets and client requests that arrived earlier are
admitted. While serving, `heartbeat`s keep a node in service (failover.py); a worker of a node
out of service that speaks again is told `shutdown`, and a fresh one that registers for it
rejoins (its neighbours get `peer`: the new data endpoint).

One handler per message kind (`CONTROL_HANDLERS`), each a function of the Coordinator whose
state it reads and changes; the coordinator's loop calls `on_control`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import zmq

from helix_jax.errors import HelixError, ProtocolError
from helix_jax.runtime import coordinator_requests as requests
from helix_jax.runtime import failover, security, wire
from helix_jax.scheduler import Scheduler

if TYPE_CHECKING:
    from helix_jax.runtime.coordinator import Coordinator

logger = logging.getLogger("helix_jax.runtime.coordinator")


def on_control(coord: Coordinator, identity: bytes | None, msg: wire.Message) -> None:
    assert identity is not None
    node = msg.get("node")
    if coord.keys is not None and msg.kind != "shutdown" and coord.keys.node_of(msg.sender) != node:
        raise ProtocolError(f"{msg.kind} for node {node!r} signed by the key of {coord.keys.node_of(msg.sender)!r}: dropped", "forged")
    if node in coord._identities and coord._identities[node] == identity:
        coord._last_heard[node] = time.perf_counter()
        if msg.get("mean_step_s") is not None:
            coord.step_s[node] = float(msg["mean_step_s"])
        coord.health.add_worker_drops(node, msg.get("dropped"))
    handler = CONTROL_HANDLERS.get(msg.kind)
    if handler is None:
        raise ProtocolError(f"unexpected {msg.kind!r} on the control socket")
    handler(coord, identity, node, msg)


def registered(coord: Coordinator, identity: bytes, node: str, msg: wire.Message) -> None:
    if coord._identities.get(node) != identity:
        raise ProtocolError(f"{msg.kind} for node {node!r} from a worker that did not register it", "forged")


def on_heartbeat(coord: Coordinator, identity: bytes, node: str, msg: wire.Message) -> None:
    if node not in coord._identities:
        raise ProtocolError(f"heartbeat from an unknown worker {node!r}")
    if coord._identities[node] != identity or (node in coord.down_nodes and node not in coord._rejoining):
        # a worker we gave up on (or replaced since) woke up: its requests live elsewhere
        wire.send(coord._control, wire.make("shutdown"), identity)


def on_register(coord: Coordinator, identity: bytes, node: str, msg: wire.Message) -> None:
    if node not in coord.config.placement.ranges:
        reason = f"node {node!r} holds no layers in this placement (placed nodes: {', '.join(coord.nodes)})"
        wire.send(coord._control, wire.make("failed", node=node, message=reason), identity)
        raise ProtocolError(reason)
    rejoin = node in coord.down_nodes and node not in coord._rejoining
    if node in coord._identities and coord._identities[node] != identity and not rejoin:
        wire.send(coord._control, wire.make("failed", node=node, message=f"node {node!r} already joined"), identity)
        return
    old = coord._push.pop(node, None)
    if old is not None:
        old.close(linger=0)
    coord._identities[node] = identity
    coord._data_endpoints[node] = msg["data_endpoint"]
    push = wire.configure(coord._ctx.socket(zmq.PUSH))
    if coord.keys is not None:
        security.curve_client(push, coord.keys.coordinator, coord.keys.nodes[node].public)
    push.connect(msg["data_endpoint"])
    coord._push[node] = push
    logger.info("worker %s registered (pid %s on %s)", node, msg["pid"], msg["host"])
    coord.phases[node] = ("registered", time.monotonic())
    if rejoin:
        coord._rejoining.add(node)
        assign(coord, node)
        for peer in coord.nodes:  # whoever hands off to it must reconnect
            if peer != node and peer in coord._push and coord.config.placement.can_hand_off(peer, node):
                wire.send(coord._control, wire.make("peer", node=node, data_endpoint=msg["data_endpoint"]), coord._identities[peer])
    elif len(coord._identities) == len(coord.nodes):
        assign_all(coord)


def on_progress(coord: Coordinator, identity: bytes, node: str, msg: wire.Message) -> None:
    registered(coord, identity, node, msg)
    coord.phases[node] = (msg["phase"], time.monotonic())


def on_ready(coord: Coordinator, identity: bytes, node: str, msg: wire.Message) -> None:
    registered(coord, identity, node, msg)
    coord.phases[node] = ("ready", time.monotonic())
    coord._budgets[node] = msg["kv_capacity_token_layers"]
    if msg.get("kv_page_tokens"):
        coord._page_tokens[node] = msg["kv_page_tokens"]
    coord.warmup_s[node] = float(msg["warmup_s"])
    logger.info("worker %s ready: KV %d token-layers, warm-up %.1f s", node, msg["kv_capacity_token_layers"], msg["warmup_s"])
    if len(coord._budgets) == len(coord.nodes) and coord.scheduler is None:
        start_serving(coord)
    elif node in coord._rejoining:
        failover.rejoin(coord, node)


def on_failed(coord: Coordinator, identity: bytes, node: str, msg: wire.Message) -> None:
    registered(coord, identity, node, msg)
    if coord.scheduler is not None:  # serving: the others carry on without it
        coord._rejoining.discard(node)  # a replacement that failed to load may be retried
        failover.node_down(coord, node, f"worker reported failure: {msg['message']}")
        return
    coord.failed_node = (node, msg.get("phase") or "load", msg["message"])
    coord.failure = f"worker {node} failed: {msg['message']}"
    logger.info(coord.failure)  # the deployment reports it (one message naming step and node)
    coord.ready_event.set()


def assign_all(coord: Coordinator) -> None:
    for node in coord.nodes:
        assign(coord, node)


def assign(coord: Coordinator, node: str) -> None:
    cfg = coord.config
    start, end = cfg.placement.ranges[node]
    neighbours = {n: coord._data_endpoints[n] for n in coord.nodes if n != node and cfg.placement.can_hand_off(node, n)}
    secured: dict[str, Any] = {}
    if coord.keys is not None:  # whom to encrypt to, and whom to admit on the data socket
        secured = dict(upstream=[n for n in coord.nodes if n != node and cfg.placement.can_hand_off(n, node)])
    wire.send(
        coord._control,
        wire.make(
            "assign",
            node=node,
            start_layer=start,
            end_layer=end,
            model=cfg.model.to_dict(),
            neighbours=neighbours,
            coordinator_data=coord.data_endpoint,
            weights=cfg.weights,
            emulate=cfg.emulation.to_wire() if cfg.emulation else None,
            kv_tokens=cfg.kv_tokens,
            max_batch=cfg.max_batch,
            gather_s=cfg.entry_gather_s,
            max_seq_len=cfg.max_seq_len,
            seed=cfg.seed,
            kv_layout=cfg.kv_layout,
            layer_loop=cfg.layer_loop,
            prompt_tokens_per_step=prompt_budget(coord, node),
            **secured,
        ),
        coord._identities[node],
    )


def prompt_budget(coord: Coordinator, node: str) -> int | None:
    """The node's prompt tokens per step: the cost model's, which the simulator uses."""
    from helix_jax.costmodel import CostModel
    from helix_jax.workload import WorkloadShape

    try:
        cost = CostModel(coord.config.topology, WorkloadShape.recorded_in(coord.config.placement))
        return cost.max_prompt_tokens_per_step(coord.config.topology.node(node).gpu)
    except HelixError as exc:
        logger.warning("no prompt budget for %s (%s): whole prompts per step", node, exc)
        return None


def start_serving(coord: Coordinator) -> None:
    cfg = coord.config
    coord.scheduler = Scheduler(
        cfg.placement, coord._budgets, policy=cfg.policy, queue_limit=cfg.queue_limit, seed=cfg.seed, kv_page_tokens=coord._page_tokens
    )
    now = time.perf_counter()
    coord._last_heard = {node: now for node in coord.nodes}
    coord.ready_event.set()
    early, coord._early = coord._early, []
    for identity, msg in early:
        try:
            requests.on_client(coord, identity, msg)
        except HelixError as exc:
            coord._reply_error(identity, msg.get("request_id"), exc)


CONTROL_HANDLERS: dict[str, Callable[[Coordinator, bytes, str, wire.Message], None]] = {
    "heartbeat": on_heartbeat,
    "register": on_register,
    "progress": on_progress,
    "ready": on_ready,
    "failed": on_failed,
}
