"""The coordinator's requests: client messages in, sampled tokens back (its loop's steps 3-4).

A `generate` is validated (`parse_generate`: RequestError back at once if malformed), checked
against the connection's share of the queue, submitted to the scheduler (OverloadedError when
full) and admitted by `Coordinator._admit`. Each `sampled` token from a route's last hop (with
the expected index, inside the vocabulary) is streamed to its client and sent along the same
route as the next step, until a stop condition; an `abort` from a hop fails its request.

One handler per message kind (`CLIENT_HANDLERS`, `DATA_HANDLERS`), each a function of the
Coordinator whose state it reads and changes; runtime/coordinator.py dispatches to them.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Callable

import numpy as np

from helix_jax.errors import OverloadedError, ProtocolError, RequestError
from helix_jax.runtime import wire
from helix_jax.runtime.requests import parse_generate
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
    wire.send(coord._client, wire.make(
        "info_reply", request_id=msg["request_id"], model=coord.config.model.name,
        num_layers=coord.config.model.num_layers, vocab_size=coord.config.model.vocab_size,
        time_scale=coord.config.time_scale, nodes=list(coord.nodes),
        max_seq_len=coord.config.max_seq_len), identity)


def on_stats(coord: Coordinator, identity: bytes, msg: wire.Message) -> None:
    wire.send(coord._client, wire.make("stats_reply", request_id=msg["request_id"],
                                      stats=coord.serving_stats()), identity)


def on_cancel(coord: Coordinator, identity: bytes, msg: wire.Message) -> None:
    rid = coord._by_client.get((identity, msg["request_id"]))
    if rid is not None:
        coord._finish(coord._live[rid], "cancelled", notify=False)


def on_generate(coord: Coordinator, identity: bytes, msg: wire.Message) -> None:
    if coord.scheduler is None:
        coord._early.append((identity, msg))
        return
    key = (identity, msg["request_id"])
    share = coord.config.client_queue_limit or max(1, coord.config.queue_limit * 3 // 4)
    if share < coord.config.queue_limit and coord._waiting_by_client.get(identity, 0) >= share:
        raise OverloadedError(f"this connection already has {share} requests waiting, its share of the "
                              f"queue ({coord.config.queue_limit}); retry later")
    if key in coord._by_client:  # answered without the id: the first stream's reader must not see it
        coord._reply_error(identity, None, ProtocolError(f"request id {msg['request_id']!r} is already in flight "
                                                        f"on this connection: the duplicate was dropped"))
        return
    req = parse_generate(msg, identity, coord._new_request_id(), coord.config.model, coord.codec,
                         coord.config.max_seq_len)
    coord.scheduler.submit(RequestSpec(req.request_id, len(req.prompt_ids), req.max_tokens))
    coord._live[req.request_id] = req
    coord._by_client[key] = req.request_id
    coord._waiting_by_client[identity] = coord._waiting_by_client.get(identity, 0) + 1
    coord._admit()
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
        raise ProtocolError(f"sampled token of {msg['request_id']} from {who!r}, not from its last hop "
                            f"{last!r}: dropped", "forged")
    if not 0 <= msg["token_id"] < coord.config.model.vocab_size:
        raise ProtocolError(f"sampled token id {msg['token_id']} of {msg['request_id']} is outside the "
                            f"vocabulary [0, {coord.config.model.vocab_size}): dropped", "out_of_range_token")
    delta, reason = req.add_token(msg["token_id"], coord.codec, coord.stop_ids)
    wire.send(coord._client, wire.make("token", request_id=req.client_request_id,
                                      index=len(req.output_ids) - 1, token_id=msg["token_id"],
                                      text=delta), req.identity)
    if reason is not None:
        coord._finish(req, reason, notify=True)
        return
    assert coord.scheduler is not None
    coord.scheduler.on_decode_token(req.request_id)
    position = len(req.prompt_ids) + len(req.output_ids) - 1
    coord._send_step(req, np.asarray([msg["token_id"]], dtype=np.int32), position, len(req.output_ids))


def on_abort(coord: Coordinator, msg: wire.Message) -> None:
    """A hop of the request's route could not run it (its batch raised): the request fails
    with that reason and is not replayed elsewhere (it may be what broke the batch)."""
    req = coord._live.get(msg["request_id"])
    if req is None:
        return
    hops = [h.node for h in req.route or ()]
    sender = coord.keys.node_of(msg.sender) if coord.keys is not None else msg["node"]
    if msg["node"] not in hops or sender != msg["node"]:
        raise ProtocolError(f"abort of {msg['request_id']} from {sender!r}, not a hop of its route: dropped",
                            "forged")
    assert coord.scheduler is not None
    coord.health.failed["abort"] += 1
    coord._free_hops(req)
    coord.scheduler.finish(req.request_id)
    coord._fail(req, RequestError(f"node {msg['node']} could not run this request: {msg['message']}"))
    coord._admit()


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
