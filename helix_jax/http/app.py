"""Routes of the OpenAI-compatible API (FastAPI).

Owns: `create_app(backend, api_key, ...)`: `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, `/health`, `/ready`, `/metrics`, API-key checks, body limits, and the
turning of a request into sequences (tokenize, context check, sampling defaults) and of
their events into one answer or a stream. Sits at the front of the front end's data flow:
HTTP -> **app** (schemas, tokenizer) -> backend -> coordinator; backend -> **app**
(streaming) -> HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from helix_jax.errors import RequestError
from helix_jax.http import streaming as sse
from helix_jax.http.backend import Backend, Run, SeqParams
from helix_jax.http.errors import APIError, bad_request, error_response, model_not_found, unauthorized
from helix_jax.http.schemas import ChatCompletionRequest, CompletionRequest, parse_body

MAX_BODY_BYTES = 4 << 20
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


def create_app(backend: Backend, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        _app.state.loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            await backend.close()

    app = FastAPI(title="helix-jax OpenAI-compatible API", lifespan=lifespan)
    app.state.backend = backend
    metrics = backend.metrics

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        metrics.observe_error(exc.status, exc.code)
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        err = APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", None, "internal_error")
        metrics.observe_error(err.status, err.code)
        return error_response(err)

    @app.exception_handler(ClientGone)
    async def _gone(_request: Request, _exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the sequences are already cancelled

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500
                       else "server_error")
        metrics.observe_error(err.status, None)
        return error_response(err)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].strip().encode(), api_key.encode()):
            raise unauthorized()

    def check_model(model: str) -> None:
        if model != backend.model:
            raise model_not_found(model, backend.model)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if not backend.draining:
            await backend.stats()
        await backend.ensure_serving()
        return JSONResponse({"status": "ready", "model": backend.model})

    @app.get("/metrics")
    async def prometheus() -> Response:
        with contextlib.suppress(APIError):  # the front end's own metrics even if the coordinator is gone
            metrics.update_from_stats(await backend.stats())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": backend.model, "object": "model", "created": backend.started_at, "owned_by": "helix-jax",
                "max_model_len": backend.max_seq_len, "context_length": backend.max_seq_len,
                "vocab_size": backend.vocab_size, "time_scale": backend.time_scale}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> dict[str, Any]:
        authorize(request)
        check_model(model)
        return model_card()

    async def admitted(request: Request, schema: Any) -> tuple[float, Any]:
        """(arrival time, parsed body) of a generation request that may be served now: the key,
        the body, the model and the deployment's state checked, in that order."""
        received = time.perf_counter()
        authorize(request)
        req = parse_body(await read_body(request, max_body_bytes), schema)
        check_model(req.model)
        await backend.ensure_serving()
        return received, req

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        received, req = await admitted(request, CompletionRequest)
        prompts = []
        for p in req.prompt:
            ids = backend.tokenizer.encode(p) if isinstance(p, str) else p
            bad = next((t for t in ids if not 0 <= t < backend.vocab_size), None)
            if bad is not None:
                raise bad_request(f"prompt token id {bad} is outside the vocabulary [0, {backend.vocab_size})",
                                  "prompt")
            prompts.append(ids)
        return await respond(request, req, prompts, "prompt", False, received)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        received, req = await admitted(request, ChatCompletionRequest)
        try:
            ids = backend.tokenizer.encode_chat([m.as_template_input() for m in req.messages])
        except RequestError as exc:
            raise bad_request(str(exc), "messages") from None
        return await respond(request, req, [ids], "messages", True, received)

    async def respond(request: Request, req: Any, prompts: list[list[int]], field: str, chat: bool,
                      received: float) -> Response:
        seqs = sequences(req, prompts, field, chat)
        run = backend.open(seqs, received)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        prompt_tokens = sum(len(p) for p in prompts)
        texts = [sse.TextAssembler(backend.tokenizer, s.stop) for s in seqs]
        streaming = False
        try:
            if not req.stream:
                reasons = await unless_disconnected(request, collect(run, texts))
                choices = [(sse.chat_choice if chat else sse.text_choice)(i, t.text, reasons[i])
                           for i, t in enumerate(texts)]
                use = sse.usage(prompt_tokens, sum(len(t.ids) for t in texts))
                return JSONResponse(sse.completion_object(rid, "chat.completion" if chat else "text_completion",
                                                          backend.model, choices, use))
            first = await unless_disconnected(request, first_events(run))  # errors become HTTP statuses
            streaming = True
        finally:
            if not streaming:
                backend.close_run(run)
        return RunStream(run, stream_body(run, first, texts, rid, chat, req.include_usage, prompt_tokens))

    def sequences(req: Any, prompts: list[list[int]], field: str, chat: bool) -> list[SeqParams]:
        limit = backend.max_seq_len
        seqs = []
        for ids in prompts:
            max_tokens = req.max_tokens or (limit - len(ids) if chat else COMPLETIONS_DEFAULT_MAX_TOKENS)
            if len(ids) + max(1, max_tokens) > limit:
                raise bad_request(f"This model's maximum context length is {limit} tokens. However, you requested "
                                  f"{len(ids) + max_tokens} tokens ({len(ids)} in the {field}, {max_tokens} for the "
                                  f"completion). Please reduce the length of the {field} or of max_tokens.",
                                  field, "context_length_exceeded")
            for j in range(req.n):
                seed = random.randrange(1 << 31) if req.seed is None else req.seed + j
                seqs.append(SeqParams(tuple(ids), max_tokens, 1.0 if req.temperature is None else req.temperature,
                                      req.top_p or 1.0, max(0, req.top_k or 0), seed, tuple(req.stop)))
        return seqs

    return app


class RunStream(StreamingResponse):
    """The SSE response of a run; the run is closed (its sequences cancelled if still going)
    however the response ends, even when the client leaves before the first byte."""

    def __init__(self, run: Run, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
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


async def stream_body(run: Run, first: list[tuple[int | None, str, Any]], texts: list[sse.TextAssembler],
                      rid: str, chat: bool, include_usage: bool, prompt_tokens: int) -> AsyncIterator[bytes]:
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
            yield sse.usage_chunk(rid, chat, model, created,
                                  sse.usage(prompt_tokens, sum(len(t.ids) for t in texts)))
        yield sse.SSE_DONE
    finally:
        backend.close_run(run)
