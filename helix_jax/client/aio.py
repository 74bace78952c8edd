"""AsyncClient: the asyncio client of a deployment (zmq.asyncio, one reader task).

Part of helix_jax.client; same API as Client (sync.py), with `await` / `async for`; shares
core.py (the connection) and messages.py (the wire side) with it.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Sequence

import zmq
import zmq.asyncio

from helix_jax.client.core import ClientCore
from helix_jax.client.messages import GenerateResult, StreamToken, _Collector, decode_reply, generate_message, query_reply
from helix_jax.runtime import security, wire


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


class AsyncClient(ClientCore):
    """asyncio client (zmq.asyncio); same API as Client, with `await` / `async for`."""

    def __init__(self, endpoint: str, timeout_s: float = 300.0, keys: security.ClientKeys | None = None) -> None:
        super().__init__(endpoint, timeout_s, keys)
        self._pending: dict[str, asyncio.Queue[wire.Message]] = {}
        self._reader: asyncio.Task[None] | None = None

    @staticmethod
    def _context() -> zmq.Context:
        return zmq.asyncio.Context.instance()  # its sockets' sends and receives are awaitable

    async def generate(
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
        """Same as `Client.generate`: the stream read to its end."""
        stream = self.stream(prompt, max_tokens, temperature, top_k, top_p, seed, stop, ignore_eos)
        async for _ in stream:
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
    ) -> AsyncTokenStream:
        """Same as `Client.stream`; the arguments are checked when the stream is first read."""
        out: list[GenerateResult] = []
        return AsyncTokenStream(self._run((prompt, max_tokens, temperature, top_k, top_p, seed, stop, ignore_eos), out), out)

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
                async with asyncio.timeout(self.timeout_s):
                    msg = await events.get()
            except TimeoutError:
                raise self._no_reply() from None
        finally:
            self._pending.pop(rid, None)
        return query_reply(msg)

    async def _run(self, args: tuple[Any, ...], out: list[GenerateResult]) -> AsyncIterator[StreamToken]:
        """One request: `args` are `generate_message`'s after the id; the result goes to `out`."""
        rid = next(self._ids)
        msg = generate_message(rid, *args)
        self._ensure_reader()
        events: asyncio.Queue[wire.Message] = asyncio.Queue()
        self._pending[rid] = events
        collector = _Collector(rid)
        finished = False  # done or error: nothing to cancel
        try:
            await self._sock.send_multipart(wire.encode(msg), copy=False)
            while True:
                try:  # not asyncio.wait_for: on 3.11 it drops a cancel that meets a reply in one tick
                    async with asyncio.timeout(self.timeout_s):
                        reply = await events.get()
                except TimeoutError:
                    raise self._no_reply(rid) from None
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
            msg = decode_reply(await self._sock.recv_multipart(copy=False))
            if msg is None:
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
