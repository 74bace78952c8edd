"""What the sync and async clients share on the wire: results, the `generate` message and its
checks, and reading replies (`decode_reply`; `query_reply` for `info` / `stats`; the collector
that turns a request's `token` / `done` / `error` replies into a stream and its result).

Part of helix_jax.client (the last link of the data flow: runtime -> client); sync.py and
aio.py build on it, and on core.py (the connection). Pure functions of messages: no socket.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import zmq

from helix_jax import errors
from helix_jax.errors import HelixError, ProtocolError, RequestError
from helix_jax.runtime import wire

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Timings:
    ttft_s: float  # time to first token
    tpot_s: float  # mean time per output token after the first (0 with one token)
    total_s: float
    token_times_s: tuple[float, ...]  # arrival of each token, from the send
    time_scale: float = 1.0  # figures above are wall seconds / time_scale


@dataclasses.dataclass(frozen=True)
class StreamToken:
    index: int
    token_id: int
    text: str
    wall_s: float  # wall seconds since the request was sent


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    request_id: str
    text: str
    ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: str  # "length" | "eos" | "stop"
    timings: Timings
    route: tuple[tuple[str, int, int], ...] = ()  # (node, start_layer, end_layer) per hop
    queue_s: float = 0.0  # waiting in the coordinator's queue, submit -> admission (deployment clock)


_ERROR_TYPES = {
    name: getattr(errors, name)
    for name in dir(errors)
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), HelixError)
}


def error_from_message(msg: wire.Message) -> HelixError:
    """The HelixError subclass named by an `error` message (RequestError, OverloadedError, ...)."""
    return _ERROR_TYPES.get(msg["error"], HelixError)(msg["message"])


def decode_reply(frames: Sequence[zmq.Frame]) -> wire.Message | None:
    """A reply as it came off the client's socket, or None (logged, dropped) when malformed."""
    try:
        return wire.decode(frames)
    except ProtocolError as exc:
        logger.warning("dropped a malformed reply: %s", exc)
        return None


def query_reply(msg: wire.Message) -> dict[str, Any]:
    """The fields of an `info` / `stats` reply; an `error` reply raises its HelixError."""
    if msg.kind == "error":
        raise error_from_message(msg)
    return {k: v for k, v in msg.fields.items() if k != "request_id"}


def generate_message(
    request_id: str,
    prompt: str | Sequence[int],
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    stop: Sequence[str] | None,
    ignore_eos: bool = False,
) -> wire.Message:
    """The `generate` wire message; argument types are checked here, values at the coordinator.
    `ignore_eos`: EOS and end-of-turn ids do not end the request (it runs to max_tokens or a
    stop string), as benchmarks that need fixed output lengths ask."""
    try:
        fields: dict[str, Any] = {
            "request_id": request_id,
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "top_k": int(top_k),
            "top_p": float(top_p),
            "seed": int(seed),
            "stop": [str(s) for s in stop] if stop else None,
        }
    except (TypeError, ValueError) as exc:
        raise RequestError(f"bad sampling argument: {exc}") from None
    if ignore_eos:
        fields["ignore_eos"] = True
    if isinstance(prompt, str):
        fields["prompt"] = prompt
    else:
        try:
            fields["prompt_ids"] = [int(t) for t in prompt]
        except (TypeError, ValueError):
            raise RequestError(f"prompt must be a string or a sequence of token ids, got {prompt!r}") from None
    check_generate_values(fields)
    msg = wire.make("generate", **fields)
    size = len(wire.encode(msg)[0])
    if size > wire.MAX_HEADER_BYTES:
        raise RequestError(
            f"request too large: {size} bytes encoded, at most {wire.MAX_HEADER_BYTES} "
            f"(a prompt of about {wire.MAX_HEADER_BYTES // 4} tokens)"
        )
    return msg


INT32_MAX = 2**31 - 1


def check_generate_values(fields: dict[str, Any]) -> None:
    """What the wire cannot carry, refused before it is sent (RequestError naming the field):
    integers past int32 (the runtime's token and count type; seeds past uint32), and text that
    is not valid Unicode (a lone surrogate). The coordinator checks the rest against the model."""
    for name in ("max_tokens", "top_k"):
        if not -INT32_MAX <= fields[name] <= INT32_MAX:
            raise RequestError(f"{name} {fields[name]} is out of range (at most {INT32_MAX})")
    if not 0 <= fields["seed"] < 2**32:
        raise RequestError(f"seed must be in [0, 2**32), got {fields['seed']}")
    ids = fields.get("prompt_ids") or []
    if any(not 0 <= t <= INT32_MAX for t in ids):
        raise RequestError(f"prompt token id {next(t for t in ids if not 0 <= t <= INT32_MAX)} is out of range")
    for text in [fields.get("prompt") or "", *(fields.get("stop") or [])]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(f"prompt or stop string is not valid Unicode: {exc.reason} at {exc.start}") from None


PING_INTERVAL_S = 2.0
LOST_AFTER_S = 10.0


class _Collector:
    """Turns a request's token/done/error messages into StreamTokens and a GenerateResult."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.sent_at = time.perf_counter()
        self.arrivals: list[float] = []
        self.result: GenerateResult | None = None

    def handle(self, msg: wire.Message) -> StreamToken | None:
        """A `token` gives its StreamToken; `done` sets `.result`; `error` raises its HelixError."""
        if msg.kind == "token":
            return self.on_token(msg)
        if msg.kind == "done":
            self.result = self.result_of(msg)
        elif msg.kind == "error":
            raise error_from_message(msg)
        return None

    def on_token(self, msg: wire.Message) -> StreamToken:
        wall = time.perf_counter() - self.sent_at
        self.arrivals.append(wall)
        return StreamToken(msg["index"], msg["token_id"], msg["text"], wall)

    def result_of(self, msg: wire.Message) -> GenerateResult:
        total = time.perf_counter() - self.sent_at
        scale = float(msg["time_scale"]) or 1.0
        arrivals = self.arrivals
        ttft = arrivals[0] if arrivals else total
        tpot = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else 0.0
        timings = Timings(ttft / scale, tpot / scale, total / scale, tuple(a / scale for a in arrivals), scale)
        route = tuple((str(h[0]), int(h[1]), int(h[2])) for h in msg.get("route") or ())
        return GenerateResult(
            self.request_id,
            msg["text"],
            tuple(int(i) for i in msg["ids"]),
            msg["prompt_tokens"],
            msg["finish_reason"],
            timings,
            route,
            float(msg.get("queue_s") or 0.0),
        )
