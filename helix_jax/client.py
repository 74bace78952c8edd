"""Client of a helix-jax deployment: the last link of the data flow (runtime -> client).

`Client(endpoint)` talks to the coordinator's client socket (printed by `helix-jax deploy`).
One ZeroMQ DEALER socket carries every request; each request has its own id, so any number
of requests may be in flight at once from one client. The socket is owned by one background
I/O thread; caller threads hand it outgoing messages through a queue plus a wake-up pipe, so
`Client` is thread-safe: call `generate`/`stream` from as many threads as you like.
`AsyncClient` is the asyncio twin (zmq.asyncio, one reader task). A deployment with CURVE on
(the default of `helix-jax deploy`) admits only the client keys of its connection file:
`Client.from_connection_file(PATH)` (or `keys=`) connects with them.

Timings are measured here, on arrival of each token. When the deployment runs with
`--emulate --time-scale N`, every figure in `Timings` is divided by N (the coordinator reports
N), so it reads in emulated seconds; `StreamToken.wall_s` stays in wall seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

import zmq
import zmq.asyncio

from helix_jax import errors
from helix_jax.errors import HelixError, ProtocolError, RequestError
from helix_jax.runtime import security, wire

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


_ERROR_TYPES = {name: getattr(errors, name) for name in dir(errors)
                if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), HelixError)}


def error_from_message(msg: wire.Message) -> HelixError:
    """The HelixError subclass named by an `error` message (RequestError, OverloadedError, ...)."""
    return _ERROR_TYPES.get(msg["error"], HelixError)(msg["message"])


def generate_message(request_id: str, prompt: str | Sequence[int], max_tokens: int, temperature: float,
                     top_k: int, top_p: float, seed: int, stop: Sequence[str] | None) -> wire.Message:
    """The `generate` wire message; argument types are checked here, values at the coordinator."""
    try:
        fields: dict[str, Any] = {
            "request_id": request_id, "max_tokens": int(max_tokens), "temperature": float(temperature),
            "top_k": int(top_k), "top_p": float(top_p), "seed": int(seed),
            "stop": [str(s) for s in stop] if stop else None}
    except (TypeError, ValueError) as exc:
        raise RequestError(f"bad sampling argument: {exc}") from None
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
        raise RequestError(f"request too large: {size} bytes encoded, at most {wire.MAX_HEADER_BYTES} "
                           f"(a prompt of about {wire.MAX_HEADER_BYTES // 4} tokens)")
    return msg


INT32_MAX = 2 ** 31 - 1


def check_generate_values(fields: dict[str, Any]) -> None:
    """What the wire cannot carry, refused before it is sent (RequestError naming the field):
    integers past int32 (the runtime's token and count type; seeds past uint32), and text that
    is not valid Unicode (a lone surrogate). The coordinator checks the rest against the model."""
    for name in ("max_tokens", "top_k"):
        if not -INT32_MAX <= fields[name] <= INT32_MAX:
            raise RequestError(f"{name} {fields[name]} is out of range (at most {INT32_MAX})")
    if not 0 <= fields["seed"] < 2 ** 32:
        raise RequestError(f"seed must be in [0, 2**32), got {fields['seed']}")
    ids = fields.get("prompt_ids") or []
    if any(not 0 <= t <= INT32_MAX for t in ids):
        raise RequestError(f"prompt token id {next(t for t in ids if not 0 <= t <= INT32_MAX)} is out of range")
    for text in [fields.get("prompt") or "", *(fields.get("stop") or [])]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(f"prompt or stop string is not valid Unicode: {exc.reason} at {exc.start}") from None


def _connect_dealer(ctx: zmq.Context, endpoint: str, keys: security.ClientKeys | None) -> zmq.Socket:
    """The one DEALER socket a client multiplexes all its requests over (a CURVE client with keys)."""
    sock = wire.configure(ctx.socket(zmq.DEALER))
    if keys is not None:
        security.curve_client(sock, keys.own, keys.server_public)
    sock.connect(endpoint)
    return sock


PING_INTERVAL_S = 2.0
LOST_AFTER_S = 10.0


def _request_ids() -> Iterator[str]:
    """Request ids unique to this client (the coordinator keys requests by socket and id)."""
    prefix = uuid.uuid4().hex[:8]
    return (f"{prefix}-{n}" for n in itertools.count())


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
        timings = Timings(ttft / scale, tpot / scale, total / scale,
                          tuple(a / scale for a in arrivals), scale)
        route = tuple((str(h[0]), int(h[1]), int(h[2])) for h in msg.get("route") or ())
        return GenerateResult(self.request_id, msg["text"], tuple(int(i) for i in msg["ids"]),
                              msg["prompt_tokens"], msg["finish_reason"], timings, route,
                              float(msg.get("queue_s") or 0.0))


class TokenStream:
    """Iterator of StreamToken; `.result` holds the GenerateResult once exhausted."""

    def __init__(self, client: "Client", msg: wire.Message, timeout_s: float) -> None:
        self._client, self._timeout_s = client, timeout_s
        self._collector = _Collector(msg["request_id"])
        self._events = client._open(msg)
        self.result: GenerateResult | None = None

    @property
    def request_id(self) -> str:
        return self._collector.request_id

    def cancel(self) -> None:
        """Stop the request (frees its KV at once); iterating afterwards is not allowed."""
        if self.result is None:
            self._client._close_request(self._collector.request_id, cancel=True)

    def __iter__(self) -> Iterator[StreamToken]:
        rid = self._collector.request_id
        try:
            while True:
                try:
                    msg = self._events.get(timeout=self._timeout_s)
                except queue.Empty:
                    raise HelixError(f"request {rid} got no reply within {self._timeout_s:.0f} s") from None
                token = self._collector.handle(msg)
                if token is not None:
                    yield token
                elif self._collector.result is not None:
                    self.result = self._collector.result
                    return
        finally:
            self._client._close_request(rid, cancel=self.result is None)


class Client:
    """Thread-safe synchronous client. Use as a context manager or call `close()`."""

    def __init__(self, endpoint: str, timeout_s: float = 300.0, keys: security.ClientKeys | None = None,
                 ping_interval_s: float = PING_INTERVAL_S, lost_after_s: float = LOST_AFTER_S) -> None:
        self.endpoint, self.timeout_s, self.keys = endpoint, timeout_s, keys
        # while requests wait, an `info` ping every ping_interval_s; no reply to one within
        # lost_after_s: the coordinator is lost, and every waiting call raises at once
        self.ping_interval_s, self.lost_after_s = ping_interval_s, lost_after_s
        self._ping: tuple[str, float] | None = None  # (id, sent at) of the ping awaiting its reply
        self._last_ping = time.monotonic()
        self._dead: str | None = None  # why the I/O thread stopped serving (then every call fails)
        self._sock = _connect_dealer(zmq.Context.instance(), endpoint, keys)
        self._outbox: queue.SimpleQueue[wire.Message] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._pending: dict[str, queue.SimpleQueue[wire.Message]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._ids = _request_ids()
        self._thread = threading.Thread(target=self._io_loop, name="helix-client-io", daemon=True)
        self._thread.start()

    @classmethod
    def from_connection_file(cls, path: str | Path, timeout_s: float = 300.0) -> "Client":
        """A client of the deployment described by `connection.json` (endpoint and keys)."""
        endpoint, keys = security.read_connection_file(path)
        return cls(endpoint, timeout_s, keys)

    # ---- public API
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 stop: Sequence[str] | None = None) -> GenerateResult:
        """Generate and wait for the whole answer. Raises RequestError/OverloadedError/HelixError."""
        stream = self.stream(prompt, max_tokens, temperature, top_k, top_p, seed, stop)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop: Sequence[str] | None = None) -> TokenStream:
        """Tokens as they arrive; the final GenerateResult is `stream.result` afterwards."""
        msg = generate_message(next(self._ids), prompt, max_tokens, temperature, top_k, top_p, seed, stop)
        return TokenStream(self, msg, self.timeout_s)

    def info(self) -> dict[str, Any]:
        """Model name, layers, vocabulary size, time scale, node list and max_seq_len of the deployment."""
        return self._query("info")

    def stats(self) -> dict[str, Any]:
        """The coordinator's `serving_stats()`: load, per-node KV and health, readiness."""
        return self._query("stats")["stats"]

    def _query(self, kind: str) -> dict[str, Any]:
        rid = next(self._ids)
        events = self._open(wire.make(kind, request_id=rid))
        try:
            msg = events.get(timeout=self.timeout_s)
        except queue.Empty:
            raise HelixError(f"no reply from {self.endpoint} within {self.timeout_s:.0f} s") from None
        finally:
            self._close_request(rid, cancel=False)
        if msg.kind == "error":
            raise error_from_message(msg)
        return {k: v for k, v in msg.fields.items() if k != "request_id"}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- plumbing
    def _open(self, msg: wire.Message) -> queue.SimpleQueue[wire.Message]:
        events: queue.SimpleQueue[wire.Message] = queue.SimpleQueue()
        with self._lock:
            if self._closed:
                raise HelixError("client is closed")
            if self._dead is not None:
                raise HelixError(self._dead)
            self._pending[msg["request_id"]] = events
        self._outbox.put(msg)
        os.write(self._wake_w, b"m")
        return events

    def _close_request(self, request_id: str, cancel: bool) -> None:
        with self._lock:
            self._pending.pop(request_id, None)
            closed = self._closed
        if cancel and not closed:
            self._outbox.put(wire.make("cancel", request_id=request_id))
            os.write(self._wake_w, b"c")

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            self._serve_io(poller)
        except Exception as exc:  # never leave callers waiting on a dead thread
            logger.exception("the client's I/O thread failed")
            self._fail_all(f"the client's I/O thread failed: {type(exc).__name__}: {exc}")
        finally:
            self._sock.close(linger=0)

    def _fail_all(self, reason: str) -> None:
        """Every waiting call raises HelixError(reason); so does every later one."""
        with self._lock:
            self._dead = reason
            pending, self._pending = self._pending, {}
        for rid, events in pending.items():
            events.put(wire.make("error", request_id=rid, error="HelixError", message=reason))

    def _check_coordinator(self) -> None:
        """The ping of the class docstring: send one while requests wait; no answer in time: lost."""
        now = time.monotonic()
        if self._ping is not None and now - self._ping[1] > self.lost_after_s:
            self._fail_all(f"lost the coordinator at {self.endpoint}: no reply to a ping within "
                           f"{self.lost_after_s:g} s")
            self._ping = None
        elif self._ping is None and self._pending and now - self._last_ping >= self.ping_interval_s:
            rid = f"ping-{uuid.uuid4().hex[:8]}"
            self._ping, self._last_ping = (rid, now), now
            wire.send(self._sock, wire.make("info", request_id=rid))

    def _serve_io(self, poller: zmq.Poller) -> None:
        while True:
            events = dict(poller.poll(int(self.ping_interval_s * 1000)))
            self._check_coordinator()
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
                if self._closed:
                    return
                while True:
                    try:
                        wire.send(self._sock, self._outbox.get_nowait())
                    except queue.Empty:
                        break
            if self._sock in events:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                _, msg = wire.recv(self._sock)
            except zmq.Again:
                return
            except ProtocolError as exc:
                logger.warning("dropped a malformed reply: %s", exc)
                continue
            if self._ping is not None and msg.get("request_id") == self._ping[0]:
                self._ping = None  # the coordinator answers
                continue
            with self._lock:
                events = self._pending.get(msg.get("request_id") or "")
            if events is not None:
                events.put(msg)
            elif msg.kind == "error":
                logger.warning("coordinator error: %s", msg["message"])


class AsyncTokenStream:
    """Async iterator of StreamToken; `.result` holds the GenerateResult once exhausted and
    `aclose()` cancels the request (its KV is freed at once) if it has not finished."""

    def __init__(self, tokens: AsyncIterator[StreamToken], out: list[GenerateResult]) -> None:
        self._tokens, self._out = tokens, out

    def __aiter__(self) -> "AsyncTokenStream":
        return self

    async def __anext__(self) -> StreamToken:
        return await self._tokens.__anext__()

    @property
    def result(self) -> GenerateResult | None:
        return self._out[0] if self._out else None

    async def aclose(self) -> None:
        await self._tokens.aclose()  # type: ignore[attr-defined]


class AsyncClient:
    """asyncio client (zmq.asyncio); same API as Client, with `await` / `async for`."""

    def __init__(self, endpoint: str, timeout_s: float = 300.0, keys: security.ClientKeys | None = None) -> None:
        self.endpoint, self.timeout_s, self.keys = endpoint, timeout_s, keys
        self._sock: Any = _connect_dealer(zmq.asyncio.Context.instance(), endpoint, keys)  # a zmq.asyncio socket: awaitable sends
        self._pending: dict[str, asyncio.Queue[wire.Message]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ids = _request_ids()

    @classmethod
    def from_connection_file(cls, path: str | Path, timeout_s: float = 300.0) -> "AsyncClient":
        """Same as `Client.from_connection_file`."""
        endpoint, keys = security.read_connection_file(path)
        return cls(endpoint, timeout_s, keys)

    async def generate(self, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.0,
                       top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                       stop: Sequence[str] | None = None) -> GenerateResult:
        result: list[GenerateResult] = []
        async for _ in self._run(prompt, max_tokens, temperature, top_k, top_p, seed, stop, result):
            pass
        return result[0]

    def stream(self, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop: Sequence[str] | None = None) -> AsyncTokenStream:
        out: list[GenerateResult] = []
        return AsyncTokenStream(self._run(prompt, max_tokens, temperature, top_k, top_p, seed, stop, out), out)

    async def info(self) -> dict[str, Any]:
        """Same as `Client.info`."""
        return await self._query("info")

    async def stats(self) -> dict[str, Any]:
        """Same as `Client.stats`."""
        return (await self._query("stats"))["stats"]

    async def _query(self, kind: str) -> dict[str, Any]:
        rid = next(self._ids)
        self._ensure_reader()
        events: asyncio.Queue[wire.Message] = asyncio.Queue()
        self._pending[rid] = events
        try:
            await self._sock.send_multipart(wire.encode(wire.make(kind, request_id=rid)))
            try:
                msg = await asyncio.wait_for(events.get(), self.timeout_s)
            except asyncio.TimeoutError:
                raise HelixError(f"no reply from {self.endpoint} within {self.timeout_s:.0f} s") from None
        finally:
            self._pending.pop(rid, None)
        if msg.kind == "error":
            raise error_from_message(msg)
        return {k: v for k, v in msg.fields.items() if k != "request_id"}

    async def _run(self, prompt: Any, max_tokens: int, temperature: float, top_k: int, top_p: float,
                   seed: int, stop: Sequence[str] | None, out: list[GenerateResult]) -> AsyncIterator[StreamToken]:
        rid = next(self._ids)
        msg = generate_message(rid, prompt, max_tokens, temperature, top_k, top_p, seed, stop)
        self._ensure_reader()
        events: asyncio.Queue[wire.Message] = asyncio.Queue()
        self._pending[rid] = events
        collector = _Collector(rid)
        finished = False  # done or error: nothing to cancel
        try:
            await self._sock.send_multipart(wire.encode(msg), copy=False)
            while True:
                try:
                    reply = await asyncio.wait_for(events.get(), self.timeout_s)
                except asyncio.TimeoutError:
                    raise HelixError(f"request {rid} got no reply within {self.timeout_s:.0f} s") from None
                finished = reply.kind in ("done", "error")
                token = collector.handle(reply)
                if token is not None:
                    yield token
                elif collector.result is not None:
                    out.append(collector.result)
                    return
        finally:
            self._pending.pop(rid, None)
            if not finished:
                await self._sock.send_multipart(wire.encode(wire.make("cancel", request_id=rid)))

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            try:
                msg = wire.decode(frames)
            except ProtocolError as exc:
                logger.warning("dropped a malformed reply: %s", exc)
                continue
            events = self._pending.get(msg.get("request_id") or "")
            if events is not None:
                events.put_nowait(msg)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        self._sock.close(linger=0)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
