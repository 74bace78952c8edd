"""Wire format: every ZeroMQ message between client, coordinator and workers.

Owns the byte layout and its validation (the fields of each kind: wire_schema.py); sits under
the runtime (client -> coordinator -> workers -> coordinator -> client). A message is one
multipart ZeroMQ message::

    frame 0      msgpack header {"v": 1, "kind": "step", "f": {fields...},
                                 "a": [["float32", [4, 64]], ...]}
    frame 1..n   raw array bytes, C order, one frame per entry of "a"

Several messages to one peer can travel as one *bundle* (`send_many`), so that a batch that one
step produced reaches the next stage whole, and the next step takes it whole instead of the
first few messages that happened to have arrived::

    frame 0      b"HXB1"
    frame 1      msgpack [frames of message 1, frames of message 2, ...]
    frame 2..    the messages' frames, one after another

`drain` hands a bundle's messages to its handler one by one, each decoded and checked on its
own: a bad message in a bundle loses only itself, a malformed bundle only itself.

No pickle anywhere: the header is plain msgpack (str, int, float, bool, None, list, map) and
arrays travel as raw buffers described by the header. Senders hand numpy buffers to pyzmq
with `copy=False`; receivers build read-only numpy views on the received frames (zero copy).

`decode` checks the version, the kind, every required field and its type, the frame count
and that each frame's size matches its dtype and shape; anything else raises
`ProtocolError`, which the receiving loop logs and drops: a bad message never crashes a
process or touches another request.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import msgpack
import numpy as np
import zmq

from helix_jax.errors import HelixError, ProtocolError
from helix_jax.runtime.wire_schema import SCHEMAS, Schema

logger = logging.getLogger(__name__)

WIRE_VERSION = 1
HEARTBEAT_INTERVAL_S = 1.0  # a serving worker's `heartbeat` period (wall clock)
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 8
MAX_ARRAY_DIMS = 4
BUNDLE_MAGIC = b"HXB1"
MAX_BUNDLE = 4096  # messages in one bundle


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":  # ml_dtypes ships with jax; only needed when bf16 activations travel
        return np.dtype(__import__("ml_dtypes").bfloat16)
    return np.dtype(name)


ALLOWED_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "uint8")


@dataclasses.dataclass(frozen=True)
class Message:
    """One decoded (or to-be-encoded) wire message. `fields` follow SCHEMAS[kind]."""

    kind: str
    fields: Mapping[str, Any]
    arrays: tuple[np.ndarray, ...] = ()
    sender: str | None = None  # the peer's CURVE public key (z85) on a secured socket; else None

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def make(kind: str, arrays: Sequence[np.ndarray] = (), **fields: Any) -> Message:
    """Build a message; checks it against its schema so bugs surface at the sender."""
    msg = Message(kind, fields, tuple(arrays))
    _check_fields(msg.kind, msg.fields, len(msg.arrays))
    return msg


def _check_fields(kind: str, fields: Mapping[str, Any], num_arrays: int) -> Schema:
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if not isinstance(fields, Mapping):
        raise ProtocolError(f"{kind}: fields must be a map, got {type(fields).__name__}")
    for name, types in schema.required.items():
        if name not in fields:
            raise ProtocolError(f"{kind}: missing field {name!r}")
        _check_type(kind, name, fields[name], types)
    for name, types in schema.optional.items():
        if name in fields:
            _check_type(kind, name, fields[name], types)
    if num_arrays != schema.num_arrays:
        raise ProtocolError(f"{kind}: expected {schema.num_arrays} array frame(s), got {num_arrays}")
    return schema


def _check_type(kind: str, name: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types:  # bool is an int subclass: reject it
        raise ProtocolError(f"{kind}.{name}: expected {_names(types)}, got bool")
    if not isinstance(value, types):
        raise ProtocolError(f"{kind}.{name}: expected {_names(types)}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{kind}.{name}: must be finite, got {value!r}")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def encode(msg: Message) -> list[Any]:
    """Frames of `msg`: the msgpack header, then each array's buffer (no copy).

    The fields are not checked again: `make` checked them at the sender (and `decode` at the
    receiver checks everything that arrives)."""
    arrays = [np.ascontiguousarray(a) for a in msg.arrays]
    meta = []
    for a in arrays:
        if a.dtype.name not in ALLOWED_DTYPES:
            raise ProtocolError(f"{msg.kind}: dtype {a.dtype.name!r} cannot travel; use one of {ALLOWED_DTYPES}")
        meta.append([a.dtype.name, list(a.shape)])
    header = msgpack.packb({"v": WIRE_VERSION, "kind": msg.kind, "f": dict(msg.fields), "a": meta}, use_bin_type=True)
    # byte views: exportable through the buffer protocol whatever the dtype (bf16 is not)
    return [header, *(a.reshape(-1).view(np.uint8) for a in arrays)]


def decode(frames: Sequence[Any], sender: str | None = None) -> Message:
    """Parse frames (bytes, memoryviews or zmq.Frame) into a validated Message."""
    if not frames:
        raise ProtocolError("empty message")
    raw = _buffer(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    version = header.get("v")
    if version != WIRE_VERSION:
        raise ProtocolError(f"unsupported wire version {version!r} (this side speaks {WIRE_VERSION})")
    kind, fields, meta = header.get("kind"), header.get("f", {}), header.get("a", [])
    if not isinstance(kind, str):
        raise ProtocolError("header has no message kind")
    if not isinstance(meta, list) or len(meta) > MAX_ARRAYS:
        raise ProtocolError(f"{kind}: bad array table")
    if len(frames) - 1 != len(meta):
        raise ProtocolError(f"{kind}: header lists {len(meta)} array(s) but {len(frames) - 1} frame(s) follow")
    _check_fields(kind, fields, len(meta))
    arrays = tuple(_array(kind, entry, frames[i + 1]) for i, entry in enumerate(meta))
    return Message(kind, fields, arrays, sender)


def _buffer(frame: Any) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)


def _array(kind: str, entry: Any, frame: Any) -> np.ndarray:
    if (
        not isinstance(entry, list)
        or len(entry) != 2
        or entry[0] not in ALLOWED_DTYPES
        or not isinstance(entry[1], list)
        or len(entry[1]) > MAX_ARRAY_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in entry[1])
    ):
        raise ProtocolError(f"{kind}: bad array description {entry!r}")
    dtype = _dtype(entry[0])
    shape = tuple(entry[1])
    buf = _buffer(frame)
    expected = dtype.itemsize * math.prod(shape)
    if buf.nbytes != expected:
        raise ProtocolError(f"{kind}: array {entry[0]}{list(shape)} needs {expected} bytes, frame has {buf.nbytes}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------------------- socket helpers


def send(sock: zmq.Socket, msg: Message, identity: bytes | None = None) -> None:
    """Send `msg` (prefixed by a ROUTER identity if given) without copying array buffers."""
    frames = encode(msg)
    if identity is not None:
        frames = [identity, *frames]
    sock.send_multipart(frames, copy=False)


def send_many(sock: zmq.Socket, msgs: Sequence[Message]) -> None:
    """Send `msgs` to one peer in one ZeroMQ message (a bundle; one message goes plain), so they
    arrive together, in order. For data sockets, whose receivers `drain`."""
    if len(msgs) == 1:
        send(sock, msgs[0])
        return
    for first in range(0, len(msgs), MAX_BUNDLE):
        parts = [encode(msg) for msg in msgs[first : first + MAX_BUNDLE]]
        frames = [BUNDLE_MAGIC, msgpack.packb([len(p) for p in parts]), *(f for p in parts for f in p)]
        sock.send_multipart(frames, copy=False)


def split_bundle(frames: Sequence[Any]) -> list[Sequence[Any]]:
    """The frames of each message a received ZeroMQ message holds: itself, or a bundle's parts.
    ProtocolError if it is a malformed bundle."""
    if len(frames) < 2 or _buffer(frames[0]) != BUNDLE_MAGIC:
        return [frames]
    try:
        sizes = msgpack.unpackb(_buffer(frames[1]), raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"bundle: its table is not msgpack: {type(exc).__name__}") from None
    if (
        not isinstance(sizes, list)
        or not 1 <= len(sizes) <= MAX_BUNDLE
        or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_ARRAYS + 1 for n in sizes)
    ):
        raise ProtocolError("bundle: bad table of message sizes")
    if sum(sizes) != len(frames) - 2:
        raise ProtocolError(f"bundle: its table lists {sum(sizes)} frame(s) but {len(frames) - 2} follow")
    parts, at = [], 2
    for n in sizes:
        parts.append(frames[at : at + n])
        at += n
    return parts


def recv(sock: zmq.Socket, routed: bool = False, flags: int = zmq.NOBLOCK, secure: bool = False) -> tuple[bytes | None, Message]:
    """Receive one message (by default without blocking: zmq.Again when none is waiting); with
    `routed` the first frame is the peer identity; with `secure` (a CURVE server socket)
    `Message.sender` is the public key the ZAP handler admitted the peer with.

    Raises ProtocolError (the identity, when known, is in `.identity`) for a bad message;
    the message has already been consumed, so the caller just logs and continues.
    """
    identity, frames, sender = _recv_frames(sock, routed, secure, flags)
    try:
        return identity, decode(frames, sender)
    except ProtocolError as exc:
        exc.identity = identity  # type: ignore[attr-defined]
        raise


def _recv_frames(sock: zmq.Socket, routed: bool, secure: bool, flags: int = zmq.NOBLOCK) -> tuple[bytes | None, list[Any], str | None]:
    """(peer identity or None, the payload's frames, the CURVE sender or None) of one message."""
    frames = sock.recv_multipart(flags, copy=False)
    identity = None
    if routed and len(frames) < 2:
        raise ProtocolError("routed message without a payload")
    if routed:
        identity = bytes(frames[0].buffer)
        frames = frames[1:]
    sender = None
    if secure:  # the ZAP user id (always set on a CURVE server socket)
        user = frames[-1].get("User-Id")
        sender = user if isinstance(user, str) else None
    return identity, frames, sender


DRAIN_LIMIT = 10_000  # messages handled per socket per poll, so one flood cannot starve the others


def drain(
    sock: zmq.Socket,
    handler: Callable[[bytes | None, Message], None],
    routed: bool = False,
    on_reject: Callable[[bytes | None, Message | None, HelixError], None] | None = None,
    secure: bool = False,
) -> None:
    """Handle every waiting message of `sock` (up to DRAIN_LIMIT) with `handler(identity, msg)`.

    A malformed message, or one whose handler raises HelixError, is logged, reported to
    `on_reject(identity, msg or None, error)` and dropped; the loop goes on with the next one.
    """
    for _ in range(DRAIN_LIMIT):
        try:
            identity, frames, sender = _recv_frames(sock, routed, secure)
        except zmq.Again:
            return
        except ProtocolError as exc:
            _reject_malformed(on_reject, getattr(exc, "identity", None), exc)
            continue
        try:
            parts = split_bundle(frames)
        except ProtocolError as exc:
            _reject_malformed(on_reject, identity, exc)
            continue
        for part in parts:
            try:
                msg = decode(part, sender)
            except ProtocolError as exc:
                _reject_malformed(on_reject, identity, exc)
                continue
            _handle(handler, identity, msg, on_reject)


def _reject_malformed(
    on_reject: Callable[[bytes | None, Message | None, HelixError], None] | None, identity: bytes | None, exc: ProtocolError
) -> None:
    logger.warning("rejected a malformed message: %s", exc)
    if on_reject is not None:
        on_reject(identity, None, exc)


def _handle(
    handler: Callable[[bytes | None, Message], None],
    identity: bytes | None,
    msg: Message,
    on_reject: Callable[[bytes | None, Message | None, HelixError], None] | None,
) -> None:
    try:
        handler(identity, msg)
    except HelixError as exc:  # a bad message of a known kind: reject it, keep serving
        logger.warning("rejected %s: %s", msg.kind, exc)
        if on_reject is not None:
            on_reject(identity, msg, exc)
    except Exception as exc:  # a value no check foresaw: still only this message is lost
        logger.exception("rejected %s: its handler failed", msg.kind)
        if on_reject is not None:
            on_reject(identity, msg, ProtocolError(f"{msg.kind} could not be handled: {type(exc).__name__}: {exc}", "handler_error"))


def configure(sock: zmq.Socket) -> zmq.Socket:
    """Options every runtime socket gets: close at once (linger 0), deep queues."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock


def bind_free_port(sock: zmq.Socket, host: str = "127.0.0.1", port: int = 0) -> str:
    """Bind to `host:port` (port 0: a free port chosen by the OS); return the endpoint."""
    sock.bind(f"tcp://{host}:{port}")
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return endpoint.decode()
