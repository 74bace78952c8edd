"""The coordinator's requests: client messages in, sampled tokens back (its loop's steps 3-4).

A `generate` is validated (`parse_generate`: RequestError back at once if malformed), checked
against the connection's share of the queue, submitted to the scheduler (OverloadedError when
full) and admitted by `admit` (its route from the scheduler, its prompt to the first hop).
Each `sampled` token from a route's last hop (with the expected index, inside the vocabulary)
is streamed to its client and sent along the same route as the next step, until a stop
condition; an `abort` from a hop fails its request.

A request ends in `finish` (done, stopped or cancelled: `free` to its hops, its KV released,
the next request admitted) or `fail` (an `error` to its client).

One handler per message kind (`CLIENT_HANDLERS`, `DATA_HANDLERS`), each a function of the
Coordinator whose state it reads and changes; runtime/coordinator.py dispatches to them.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from helix_jax.errors import HelixError, OverloadedError, ProtocolError, RequestError
from helix_jax.runtime import wire
from helix_jax.runtime.requests import LiveRequest, parse_generate
from helix_jax.scheduler import RequestSpec

if TYPE_CHECKING:
    from helix_jax.runtime.coordinator import Coordinator


def on_client(coord: Coordinator, identity: bytes | None, msg: wire.Message) -> None:
    assert identity is not None
    handler = CLIENT_HANDLERS.get(msg.kind)
    if handler is None:
        raise ProtocolError(f"unexpected {msg.kind!r} on the client socket")
    handler(coord, identity, msg)


def on_info(coord: Coordinator, identity: bytes, msg: wire.Message) -> None:
    wire.send(
        coord._client,
        wire.make(
            "info_reply",
            request_id=msg["request_id"],
            model=coord.config.model.name,
            num_layers=coord.config.model.num_layers,
            vocab_size=coord.config.model.vocab_size,
            time_scale=coord.config.time_scale,
            nodes=list(coord.nodes),
            max_seq_len=coord.config.max_seq_len,
        ),
        identity,
    )


def on_stats(coord: Coordinator, identity: bytes, msg: wire.Message) -> None:
    wire.send(coord._client, wire.make("stats_reply", request_id=msg["request_id"], stats=coord.serving_stats()), identity)


def on_cancel(coord: Coordinator, identity: bytes, msg: wire.Message) -> None:
    rid = coord._by_client.get((identity, msg["request_id"]))
    if rid is not None:
        finish(coord, coord._live[rid], "cancelled", notify=False)


def on_generate(coord: Coordinator, identity: bytes, msg: wire.Message) -> None:
    if coord.scheduler is None:
        coord._early.append((identity, msg))
        return
    key = (identity, msg["request_id"])
    share = coord.config.client_queue_limit or max(1, coord.config.queue_limit * 3 // 4)
    if share < coord.config.queue_limit and coord._waiting_by_client.get(identity, 0) >= share:
        raise OverloadedError(
            f"this connection already has {share} requests waiting, its share of the queue ({coord.config.queue_limit}); retry later"
        )
    if key in coord._by_client:  # answered without the id: the first stream's reader must not see it
        coord._reply_error(
            identity,
            None,
            ProtocolError(f"request id {msg['request_id']!r} is already in flight on this connection: the duplicate was dropped"),
        )
        return
    req = parse_generate(msg, identity, coord._new_request_id(), coord.config.model, coord.codec, coord.config.max_seq_len)
    coord.scheduler.submit(RequestSpec(req.request_id, len(req.prompt_ids), req.max_tokens))
    coord._live[req.request_id] = req
    coord._by_client[key] = req.request_id
    coord._waiting_by_client[identity] = coord._waiting_by_client.get(identity, 0) + 1
    admit(coord)
    coord.peak_queued = max(coord.peak_queued, coord.scheduler.queue_length)


def new_request_id() -> str:
    """An internal request id: random, so no peer can guess another client's (issue 19)."""
    return "r" + secrets.token_hex(8)


def on_data(coord: Coordinator, msg: wire.Message) -> None:
    handler = DATA_HANDLERS.get(msg.kind)
    if handler is None:
        raise ProtocolError(f"unexpected {msg.kind!r} on the coordinator's data socket")
    handler(coord, msg)


def on_sampled(coord: Coordinator, msg: wire.Message) -> None:
    req = coord._live.get(msg["request_id"])
    if req is None or msg["index"] != len(req.output_ids):
        return  # cancelled meanwhile, or a stray duplicate
    last = req.route[-1].node if req.route else None
    if msg["node"] != last or (coord.keys is not None and coord.keys.node_of(msg.sender) != last):
        who = coord.keys.node_of(msg.sender) if coord.keys is not None else msg["node"]
        raise ProtocolError(f"sampled token of {msg['request_id']} from {who!r}, not from its last hop {last!r}: dropped", "forged")
    if not 0 <= msg["token_id"] < coord.config.model.vocab_size:
        raise ProtocolError(
            f"sampled token id {msg['token_id']} of {msg['request_id']} is outside the "
            f"vocabulary [0, {coord.config.model.vocab_size}): dropped",
            "out_of_range_token",
        )
    delta, reason = req.add_token(msg["token_id"], coord.codec, coord.stop_ids)
    wire.send(
        coord._client,
        wire.make("token", request_id=req.client_request_id, index=len(req.output_ids) - 1, token_id=msg["token_id"], text=delta),
        req.identity,
    )
    if reason is not None:
        finish(coord, req, reason, notify=True)
        return
    assert coord.scheduler is not None
    coord.scheduler.on_decode_token(req.request_id)
    position = len(req.prompt_ids) + len(req.output_ids) - 1
    send_step(coord, req, np.asarray([msg["token_id"]], dtype=np.int32), position, len(req.output_ids))


def on_abort(coord: Coordinator, msg: wire.Message) -> None:
    """A hop of the request's route could not run it (its batch raised): the request fails
    with that reason and is not replayed elsewhere (it may be what broke the batch)."""
    req = coord._live.get(msg["request_id"])
    if req is None:
        return
    hops = [h.node for h in req.route or ()]
    sender = coord.keys.node_of(msg.sender) if coord.keys is not None else msg["node"]
    if msg["node"] not in hops or sender != msg["node"]:
        raise ProtocolError(f"abort of {msg['request_id']} from {sender!r}, not a hop of its route: dropped", "forged")
    assert coord.scheduler is not None
    coord.health.failed["abort"] += 1
    free_hops(coord, req)
    coord.scheduler.finish(req.request_id)
    fail(coord, req, RequestError(f"node {msg['node']} could not run this request: {msg['message']}"))
    admit(coord)


# ---------------------------------------------------------------- admission and the end of a request
def admit(coord: Coordinator) -> None:
    assert coord.scheduler is not None
    for adm in coord.scheduler.admit_ready():
        req = coord._live[adm.request_id]
        req.set_route(adm.route)
        if req.admitted_at is None:
            req.admitted_at = time.perf_counter()
            dequeued(coord, req)
        for hop in adm.route:
            used = coord.scheduler.ledger.used(hop.node)
            coord.peak_kv_used[hop.node] = max(coord.peak_kv_used[hop.node], used)
        # a resumed request prefills its prompt and every token already streamed
        ids = np.asarray([*req.prompt_ids, *req.output_ids], dtype=np.int32)
        send_step(coord, req, ids, position=0, index=len(req.output_ids), kv_tokens=adm.spec.kv_tokens)


def send_step(coord: Coordinator, req: LiveRequest, ids: np.ndarray, position: int, index: int, **extra: Any) -> None:
    if position == 0:  # checked once at admission (parse_generate); each hop keeps it with the request
        extra["sampling"] = req.sampling_wire
    msg = wire.make("step", [ids], request_id=req.request_id, route=req.route_wire, hop=0, position=position, index=index, **extra)
    assert req.route is not None
    coord._send_data(req.route[0].node, msg, len(ids))


def dequeued(coord: Coordinator, req: LiveRequest) -> None:
    """`req` leaves the queue for the first time (admitted, or ended while waiting)."""
    left = coord._waiting_by_client.get(req.identity, 0) - 1
    if left > 0:
        coord._waiting_by_client[req.identity] = left
    else:
        coord._waiting_by_client.pop(req.identity, None)


def finish(coord: Coordinator, req: LiveRequest, reason: str, notify: bool) -> None:
    assert coord.scheduler is not None
    if req.admitted_at is None:
        dequeued(coord, req)
    coord._live.pop(req.request_id, None)
    coord._by_client.pop((req.identity, req.client_request_id), None)
    free_hops(coord, req)
    coord.scheduler.finish(req.request_id)
    if notify:
        coord.completed += 1
        ttft = (req.first_token_at - req.submitted_at) if req.first_token_at else 0.0
        queued = ((req.admitted_at or req.submitted_at) - req.submitted_at) / coord.config.time_scale
        wire.send(
            coord._client,
            wire.make(
                "done",
                request_id=req.client_request_id,
                ids=list(req.output_ids),
                text=req.text,
                finish_reason=reason,
                prompt_tokens=len(req.prompt_ids),
                time_scale=coord.config.time_scale,
                server_ttft_s=ttft / coord.config.time_scale,
                queue_s=queued,
                route=req.route_wire,
            ),
            req.identity,
        )
    admit(coord)


def free_hops(coord: Coordinator, req: LiveRequest) -> None:
    """Release a request's KV slot on every live hop of its route."""
    for hop in req.route or ():
        if hop.node in coord._push:
            coord._send_data(hop.node, wire.make("free", request_id=req.request_id), 0)


def fail(coord: Coordinator, req: LiveRequest, exc: HelixError) -> None:
    """End a request with an `error` to its client (its KV is already released)."""
    if req.admitted_at is None and coord._live.get(req.request_id) is req:
        dequeued(coord, req)
    coord._live.pop(req.request_id, None)
    coord._by_client.pop((req.identity, req.client_request_id), None)
    coord._reply_error(req.identity, req.client_request_id, exc)


CLIENT_HANDLERS: dict[str, Callable[[Coordinator, bytes, wire.Message], None]] = {
    "info": on_info,
    "stats": on_stats,
    "cancel": on_cancel,
    "generate": on_generate,
}


DATA_HANDLERS: dict[str, Callable[[Coordinator, wire.Message], None]] = {
    "sampled": on_sampled,
    "abort": on_abort,
}
