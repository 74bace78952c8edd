"""Wire format: round trips, zero-copy views, and rejection of every kind of bad message."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from helix_jax.errors import HelixError, ProtocolError, RequestError
from helix_jax.runtime import wire


def _step(hidden: np.ndarray) -> wire.Message:
    return wire.make(
        "step",
        [hidden],
        request_id="r1",
        route=[["a", 0, 4], ["b", 4, 8]],
        hop=1,
        position=3,
        index=2,
        sampling={"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0},
    )


def test_round_trip_keeps_fields_and_arrays() -> None:
    hidden = np.arange(12, dtype=np.float32).reshape(3, 4)
    msg = wire.decode(wire.encode(_step(hidden)))
    assert msg.kind == "step" and msg["route"] == [["a", 0, 4], ["b", 4, 8]] and msg["hop"] == 1
    np.testing.assert_array_equal(msg.arrays[0], hidden)
    assert msg.arrays[0].dtype == np.float32 and msg.arrays[0].shape == (3, 4)


def test_bfloat16_and_int_arrays_round_trip() -> None:
    import ml_dtypes

    bf = np.linspace(-2, 2, 8, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 4)
    out = wire.decode(wire.encode(_step(bf))).arrays[0]
    assert out.dtype == bf.dtype
    np.testing.assert_array_equal(out.astype(np.float32), bf.astype(np.float32))
    ids = np.array([5, 6, 7], np.int32)
    assert wire.decode(wire.encode(_step(ids))).arrays[0].tolist() == [5, 6, 7]


def test_decoded_array_is_a_view_of_the_frame() -> None:
    frames = wire.encode(_step(np.ones((2, 4), np.float32)))
    payload = bytearray(bytes(frames[1]))
    out = wire.decode([frames[0], payload]).arrays[0]
    payload[0:4] = np.float32(9.0).tobytes()
    assert out[0, 0] == 9.0  # no copy was made


def test_over_real_sockets_without_copy() -> None:
    ctx = zmq.Context.instance()
    pull = wire.configure(ctx.socket(zmq.PULL))
    push = wire.configure(ctx.socket(zmq.PUSH))
    try:
        endpoint = wire.bind_free_port(pull)
        push.connect(endpoint)
        wire.send(push, _step(np.full((2, 4), 0.5, np.float32)))
        assert pull.poll(5000)
        _, msg = wire.recv(pull)
        assert msg["request_id"] == "r1" and float(msg.arrays[0].sum()) == 4.0
    finally:
        push.close(0)
        pull.close(0)


def _header(**overrides) -> bytes:
    base = {"v": wire.WIRE_VERSION, "kind": "free", "f": {"request_id": "x"}, "a": []}
    base.update(overrides)
    return msgpack.packb(base)


@pytest.mark.parametrize(
    "frames, needle",
    [
        ([b"\xc1\xff garbage"], "not msgpack"),
        ([msgpack.packb([1, 2, 3])], "must be a map"),
        ([_header(v=99)], "unsupported wire version 99"),
        ([_header(kind="explode")], "unknown message kind 'explode'"),
        ([_header(f={})], "missing field 'request_id'"),
        ([_header(f={"request_id": 5})], "free.request_id: expected str"),
        ([_header(), b"extra"], "0 array(s) but 1 frame(s)"),
        ([], "empty message"),
    ],
)
def test_malformed_messages_are_rejected(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError, match=None) as info:
        wire.decode(frames)
    assert needle in str(info.value)


def test_shape_and_dtype_mismatches_are_rejected() -> None:
    header, data = wire.encode(_step(np.ones((2, 4), np.float32)))
    raw = msgpack.unpackb(header)
    with pytest.raises(ProtocolError, match="needs 32 bytes, frame has 16"):
        wire.decode([header, bytes(data)[:16]])
    raw["a"] = [["object", [2, 4]]]
    with pytest.raises(ProtocolError, match="bad array description"):
        wire.decode([msgpack.packb(raw), bytes(data)])
    raw["a"] = [["float32", [2, -4]]]
    with pytest.raises(ProtocolError, match="bad array description"):
        wire.decode([msgpack.packb(raw), bytes(data)])
    raw["a"] = []
    with pytest.raises(ProtocolError, match="expected 1 array frame"):
        wire.decode([msgpack.packb(raw)])


def test_make_checks_types_at_the_sender() -> None:
    with pytest.raises(ProtocolError, match="generate.max_tokens: expected int, got bool"):
        wire.make("generate", request_id="a", max_tokens=True, temperature=0.0, top_k=0, top_p=1.0, seed=0)
    with pytest.raises(ProtocolError, match="must be finite"):
        wire.make("generate", request_id="a", max_tokens=3, temperature=float("nan"), top_k=0, top_p=1.0, seed=0)
    with pytest.raises(ProtocolError, match="cannot travel"):
        wire.encode(_step(np.ones((2, 2), np.complex64)))


@pytest.fixture
def pipe():
    """A connected (push, pull) pair of data sockets on loopback."""
    ctx = zmq.Context.instance()
    pull = wire.configure(ctx.socket(zmq.PULL))
    push = wire.configure(ctx.socket(zmq.PUSH))
    push.connect(wire.bind_free_port(pull))
    yield push, pull
    push.close(0)
    pull.close(0)


def _drain_until(pull: zmq.Socket, count: int) -> tuple[list[str], list[tuple[str | None, HelixError]]]:
    """Drain what arrives until `count` messages were handled or rejected; a `free` of request
    "bad" is refused by its handler (RequestError)."""
    handled: list[str] = []
    rejected: list[tuple[str | None, HelixError]] = []

    def handler(_identity: object, msg: wire.Message) -> None:
        if msg["request_id"] == "bad":
            raise RequestError("no such request")
        handled.append(msg["request_id"])

    while len(handled) + len(rejected) < count:  # drain what has arrived, until all have
        assert pull.poll(5000), (handled, rejected)
        wire.drain(pull, handler, on_reject=lambda _i, m, e: rejected.append((m and m["request_id"], e)))
    return handled, rejected


def test_drain_rejects_garbage_and_handler_errors_and_keeps_serving(pipe) -> None:
    push, pull = pipe
    push.send_multipart([b"\xc1 not msgpack"])
    wire.send(push, wire.make("free", request_id="bad"))
    wire.send(push, wire.make("free", request_id="good"))
    handled, rejected = _drain_until(pull, 3)
    assert handled == ["good"]
    assert [(rid, type(e)) for rid, e in rejected] == [(None, ProtocolError), ("bad", RequestError)]


def test_a_bundle_arrives_as_one_zeromq_message_and_drains_in_order(pipe) -> None:
    push, pull = pipe
    msgs = [wire.make("free", request_id=f"r{i}") for i in range(3)] + [_step(np.full((2, 4), 0.5, np.float32))]
    wire.send_many(push, msgs)
    assert pull.poll(5000)
    handled: list[str] = []
    wire.drain(pull, lambda _i, m: handled.append(f"{m.kind}:{m['request_id']}"))
    assert handled == ["free:r0", "free:r1", "free:r2", "step:r1"]  # one drain: all four had arrived together
    wire.send_many(push, msgs[:1])  # one message travels plain
    assert pull.poll(5000)
    assert wire.recv(pull)[1]["request_id"] == "r0"


def _bundle(table: bytes, *parts: list) -> list:
    return [wire.BUNDLE_MAGIC, table, *(frame for part in parts for frame in part)]


FREE = wire.encode(wire.make("free", request_id="ok"))


@pytest.mark.parametrize(
    "frames, needle",
    [
        (_bundle(b"\xc1 garbage", FREE), "bundle: its table is not msgpack: FormatError"),
        (_bundle(msgpack.packb({"n": 1}), FREE), "bundle: bad table of message sizes"),
        (_bundle(msgpack.packb([]), FREE), "bundle: bad table of message sizes"),
        (_bundle(msgpack.packb([0, 1]), FREE), "bundle: bad table of message sizes"),
        (_bundle(msgpack.packb([True]), FREE), "bundle: bad table of message sizes"),
        (_bundle(msgpack.packb([1] * (wire.MAX_BUNDLE + 1)), FREE), "bundle: bad table of message sizes"),
        (_bundle(msgpack.packb([1, 1]), FREE), "bundle: its table lists 2 frame(s) but 1 follow"),
    ],
)
def test_a_malformed_bundle_is_one_clear_error(frames: list, needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.split_bundle(frames)
    assert str(info.value) == needle


def test_a_bad_message_in_a_bundle_loses_only_itself(pipe) -> None:
    push, pull = pipe
    good, refused = wire.encode(wire.make("free", request_id="good")), wire.encode(wire.make("free", request_id="bad"))
    push.send_multipart(_bundle(msgpack.packb([1, 1, 1]), good, [b"\xc1 not msgpack"], refused))
    push.send_multipart(_bundle(msgpack.packb([2]), good))  # a table that does not fit: the bundle goes, once
    wire.send(push, wire.make("free", request_id="after"))
    handled, rejected = _drain_until(pull, 5)
    assert handled == ["good", "after"]
    assert [(rid, str(e)) for rid, e in rejected] == [
        (None, "header is not msgpack: FormatError"),
        ("bad", "no such request"),
        (None, "bundle: its table lists 2 frame(s) but 1 follow"),
    ]
