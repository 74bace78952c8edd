"""From a run's events to the HTTP answer: one JSON object, or a stream of Server-Sent Events.

Owns: `collect` (a non-streamed answer: every sequence to its end), `first_events` (a stream
starts once every sequence has its first token, so an early error is still an HTTP status),
`stream_body` and `RunStream` (the SSE response, which closes its run however it ends),
`unless_disconnected` (a client that leaves cancels the work) and `read_body` (the body
limit). Sits at the back of the front end's data flow: backend (a run's events) ->
**answers** (streaming.py's text and chunks) -> HTTP; app.py's routes call it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from helix_jax.http import streaming as sse
from helix_jax.http.backend import Run
from helix_jax.http.errors import bad_request

T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


class RunStream(StreamingResponse):
    """The SSE response of a run; the run is closed (its sequences cancelled if still going)
    however the response ends, even when the client leaves before the first byte."""

    def __init__(self, run: Run, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.backend.close_run(self.run)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or a 400 once it passes `limit` bytes (the rest is read and dropped, so the
    client gets the answer rather than a reset connection)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise bad_request(f"the request body has {size} bytes; the limit is {limit}", None, "body_too_large")
    return b"".join(chunks)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone (work cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone()
    return task.result()


async def collect(run: Run, texts: list[sse.TextAssembler]) -> list[str]:
    """Every sequence to its end; finish reasons by choice. The first error is raised."""
    reasons: dict[int, str] = {}
    while len(reasons) < len(texts):
        index, kind, value = await run.events.get()
        if kind == "error":
            raise value
        assert index is not None  # only a run-wide error has no sequence
        if kind == "token":
            texts[index].add(value)
        else:
            texts[index].flush()
            reasons[index] = value
    return [reasons[i] for i in range(len(texts))]


async def first_events(run: Run) -> list[tuple[int | None, str, Any]]:
    """Events until every sequence has one, so that an early error is an HTTP status."""
    events: list[tuple[int | None, str, Any]] = []
    seen: set[int | None] = set()
    while len(seen) < len(run.seqs):
        event = await run.events.get()
        if event[1] == "error":
            raise event[2]
        events.append(event)
        seen.add(event[0])
    return events


async def stream_body(
    run: Run,
    first: list[tuple[int | None, str, Any]],
    texts: list[sse.TextAssembler],
    rid: str,
    chat: bool,
    include_usage: bool,
    prompt_tokens: int,
) -> AsyncIterator[bytes]:
    """The SSE events of a stream; a client that goes away cancels this (and so the run)."""
    backend, created = run.backend, int(time.time())
    model, started, done = backend.model, set(), 0
    try:
        pending = list(first)
        while done < len(texts):
            index, kind, value = pending.pop(0) if pending else await run.events.get()
            if kind == "error":
                yield sse.sse(value.body())
                yield sse.SSE_DONE
                return
            assert index is not None  # only a run-wide error has no sequence
            out = b""
            if chat and index not in started:
                out += sse.chunk(rid, True, model, created, index, "", role=True)
            started.add(index)
            if kind == "token":
                delta = texts[index].add(value)
                if delta:
                    out += sse.chunk(rid, chat, model, created, index, delta)
            else:
                tail = texts[index].flush()
                if tail:
                    out += sse.chunk(rid, chat, model, created, index, tail)
                out += sse.chunk(rid, chat, model, created, index, None if chat else "", finish_reason=value)
                done += 1
            if out:
                yield out
        if include_usage:
            yield sse.usage_chunk(rid, chat, model, created, sse.usage(prompt_tokens, sum(len(t.ids) for t in texts)))
        yield sse.SSE_DONE
    finally:
        backend.close_run(run)
