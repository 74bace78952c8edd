"""Client: the thread-safe client of a deployment (one DEALER socket owned by an I/O thread).

Part of helix_jax.client (package docstring: how requests are multiplexed, timings); shares
core.py (the connection) and messages.py (the wire side) with the asyncio twin in aio.py.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any, Iterator, Sequence

import zmq

from helix_jax.client.core import ClientCore
from helix_jax.client.messages import (
    LOST_AFTER_S,
    PING_INTERVAL_S,
    GenerateResult,
    StreamToken,
    _Collector,
    decode_reply,
    generate_message,
    query_reply,
)
from helix_jax.errors import HelixError
from helix_jax.runtime import security, wire
from helix_jax.runtime.waker import Waker

logger = logging.getLogger(__name__)


class TokenStream:
    """Iterator of StreamToken; `.result` holds the GenerateResult once exhausted."""

    def __init__(self, client: "Client", msg: wire.Message) -> None:
        self._client = client
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
                    msg = self._events.get(timeout=self._client.timeout_s)
                except queue.Empty:
                    raise self._client._no_reply(rid) from None
                token = self._collector.handle(msg)
                if token is not None:
                    yield token
                elif self._collector.result is not None:
                    self.result = self._collector.result
                    return
        finally:
            self._client._close_request(rid, cancel=self.result is None)


class Client(ClientCore):
    """Thread-safe synchronous client. Use as a context manager or call `close()`."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float = 300.0,
        keys: security.ClientKeys | None = None,
        ping_interval_s: float = PING_INTERVAL_S,
        lost_after_s: float = LOST_AFTER_S,
    ) -> None:
        super().__init__(endpoint, timeout_s, keys)
        # while requests wait, an `info` ping every ping_interval_s; no reply to one within
        # lost_after_s: the coordinator is lost, and every waiting call raises at once
        self.ping_interval_s, self.lost_after_s = ping_interval_s, lost_after_s
        self._ping: tuple[str, float] | None = None  # (id, sent at) of the ping awaiting its reply
        self._last_ping = time.monotonic()
        self._dead: str | None = None  # why the I/O thread stopped serving (then every call fails)
        self._outbox: queue.SimpleQueue[wire.Message] = queue.SimpleQueue()
        self._waker = Waker("client")
        self._pending: dict[str, queue.SimpleQueue[wire.Message]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._io_loop, name="helix-client-io", daemon=True)
        self._thread.start()

    # ---- public API
    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        ignore_eos: bool = False,
    ) -> GenerateResult:
        """Generate and wait for the whole answer. Raises RequestError/OverloadedError/HelixError."""
        stream = self.stream(prompt, max_tokens, temperature, top_k, top_p, seed, stop, ignore_eos)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        ignore_eos: bool = False,
    ) -> TokenStream:
        """Tokens as they arrive; the final GenerateResult is `stream.result` afterwards."""
        msg = generate_message(next(self._ids), prompt, max_tokens, temperature, top_k, top_p, seed, stop, ignore_eos)
        return TokenStream(self, msg)

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
            raise self._no_reply() from None
        finally:
            self._close_request(rid, cancel=False)
        return query_reply(msg)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._waker.wake(b"x")
        self._thread.join(timeout=5)  # the I/O thread closes the waker as it ends, never before

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
        self._waker.wake(b"m")
        return events

    def _close_request(self, request_id: str, cancel: bool) -> None:
        with self._lock:
            self._pending.pop(request_id, None)
            closed = self._closed
        if cancel and not closed:
            self._outbox.put(wire.make("cancel", request_id=request_id))
            self._waker.wake(b"c")

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        try:
            self._serve_io(poller)
        except Exception as exc:  # never leave callers waiting on a dead thread
            logger.exception("the client's I/O thread failed")
            self._fail_all(f"the client's I/O thread failed: {type(exc).__name__}: {exc}")
        finally:
            self._sock.close(linger=0)
            self._waker.close()

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
            self._fail_all(f"lost the coordinator at {self.endpoint}: no reply to a ping within {self.lost_after_s:g} s")
            self._ping = None
        elif self._ping is None and self._pending and now - self._last_ping >= self.ping_interval_s:
            rid = f"ping-{uuid.uuid4().hex[:8]}"
            self._ping, self._last_ping = (rid, now), now
            wire.send(self._sock, wire.make("info", request_id=rid))

    def _serve_io(self, poller: zmq.Poller) -> None:
        while True:
            events = dict(poller.poll(int(self.ping_interval_s * 1000)))
            self._check_coordinator()
            if self._waker.fd in events:
                self._waker.drain()
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
                msg = decode_reply(self._sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                return
            if msg is None:
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
