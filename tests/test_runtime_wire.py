"""Wire format: round trips, zero-copy views, and rejection of every kind of bad message."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from helix_jax.errors import ProtocolError, RequestError
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


def test_drain_rejects_garbage_and_handler_errors_and_keeps_serving() -> None:
    ctx = zmq.Context.instance()
    pull = wire.configure(ctx.socket(zmq.PULL))
    push = wire.configure(ctx.socket(zmq.PUSH))
    try:
        push.connect(wire.bind_free_port(pull))
        push.send_multipart([b"\xc1 not msgpack"])
        wire.send(push, wire.make("free", request_id="bad"))
        wire.send(push, wire.make("free", request_id="good"))
        handled, rejected = [], []

        def handler(_identity: object, msg: wire.Message) -> None:
            if msg["request_id"] == "bad":
                raise RequestError("no such request")
            handled.append(msg["request_id"])

        while len(handled) + len(rejected) < 3:  # drain what has arrived, until all three have
            assert pull.poll(5000), (handled, rejected)
            wire.drain(pull, handler, on_reject=lambda _i, m, e: rejected.append((m and m["request_id"], type(e))))
        assert handled == ["good"]
        assert rejected == [(None, ProtocolError), ("bad", RequestError)]
    finally:
        push.close(0)
        pull.close(0)
