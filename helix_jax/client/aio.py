"""AsyncClient: the asyncio client of a deployment (zmq.asyncio, one reader task).

Part of helix_jax.client; same API as Client (sync.py), with `await` / `async for`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import zmq
import zmq.asyncio

from helix_jax.client.messages import (
    GenerateResult,
    StreamToken,
    _Collector,
    _connect_dealer,
    _request_ids,
    error_from_message,
    generate_message,
)
from helix_jax.errors import HelixError, ProtocolError
from helix_jax.runtime import security, wire

logger = logging.getLogger(__name__)


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

    async def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
    ) -> GenerateResult:
        result: list[GenerateResult] = []
        async for _ in self._run(prompt, max_tokens, temperature, top_k, top_p, seed, stop, result):
            pass
        return result[0]

    def stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
    ) -> AsyncTokenStream:
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

    async def _run(
        self,
        prompt: Any,
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int,
        stop: Sequence[str] | None,
        out: list[GenerateResult],
    ) -> AsyncIterator[StreamToken]:
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
