"""Routes of the OpenAI-compatible API (FastAPI).

Owns: `create_app(backend, api_key, ...)`: `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, `/health`, `/ready` (with the deployment's health), `/metrics`, the
order of a request's checks (key, body, model, readiness, the key's share of the queue) and
the turning of a request into sequences (tokenize, context check, sampling defaults). Sits at
the front of the front end's data flow: HTTP -> **app** (tenants, schemas, tokenizer) ->
backend -> coordinator; backend -> answers.py (one answer or a stream) -> HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from helix_jax.errors import RequestError
from helix_jax.http import streaming as sse
from helix_jax.http.answers import ClientGone, RunStream, collect, first_events, read_body, stream_body, unless_disconnected
from helix_jax.http.backend import Backend, SeqParams
from helix_jax.http.errors import APIError, bad_request, error_response, model_not_found
from helix_jax.http.schemas import ChatCompletionRequest, CompletionRequest, parse_body
from helix_jax.http.tenants import Tenants

MAX_BODY_BYTES = 4 << 20
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def create_app(
    backend: Backend, api_key: str | Sequence[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES, key_queue_share: int | None = None
) -> FastAPI:
    """The app of `backend`. `api_key`: one key, several (a list, or commas), or None (no auth:
    every request is one tenant); `key_queue_share`: sequences one key may have waiting
    (None: half the coordinator's queue)."""
    metrics = backend.metrics
    backend.tenants = tenants = Tenants(api_key, key_queue_share, on_refused=lambda tenant: metrics.key_refused.labels(tenant).inc())

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
        err = APIError(exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500 else "server_error")
        metrics.observe_error(err.status, None)
        return error_response(err)

    def authorize(request: Request) -> str:
        """The request's tenant (its API key's name); 401 without a configured key."""
        return tenants.identify(request.headers.get("authorization", ""))

    def check_model(model: str) -> None:
        if model != backend.model:
            raise model_not_found(model, backend.model)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 or 503 (an error object), with the deployment's health beside it when known."""
        extra: dict[str, Any] = {}
        if not backend.draining:
            with contextlib.suppress(APIError):  # ensure_serving reports it
                stats = await backend.stats()
                extra = {"health": stats["health"]} if "health" in stats else {}
        try:
            await backend.ensure_serving()
        except APIError as err:
            metrics.observe_error(err.status, err.code)
            return JSONResponse({**err.body(), **extra}, status_code=err.status, headers=err.headers)
        return JSONResponse({"status": "ready", "model": backend.model, **extra})

    @app.get("/metrics")
    async def prometheus() -> Response:
        with contextlib.suppress(APIError):  # the front end's own metrics even if the coordinator is gone
            metrics.update_from_stats(await backend.stats())
        metrics.update_tenants(tenants.waiting, tenants.names)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {
            "id": backend.model,
            "object": "model",
            "created": backend.started_at,
            "owned_by": "helix-jax",
            "max_model_len": backend.max_seq_len,
            "context_length": backend.max_seq_len,
            "vocab_size": backend.vocab_size,
            "time_scale": backend.time_scale,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> dict[str, Any]:
        authorize(request)
        check_model(model)
        return model_card()

    async def admitted(request: Request, schema: Any) -> tuple[float, str, Any]:
        """(arrival time, tenant, parsed body) of a generation request that may be served now:
        the key, the body, the model and the deployment's state checked, in that order (the
        key's share of the queue is checked once its sequences are known: `Backend.open`)."""
        received = time.perf_counter()
        tenant = authorize(request)
        req = parse_body(await read_body(request, max_body_bytes), schema)
        check_model(req.model)
        await backend.ensure_serving()
        return received, tenant, req

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        received, tenant, req = await admitted(request, CompletionRequest)
        prompts = []
        for p in req.prompt:
            ids = backend.tokenizer.encode(p) if isinstance(p, str) else p
            bad = next((t for t in ids if not 0 <= t < backend.vocab_size), None)
            if bad is not None:
                raise bad_request(f"prompt token id {bad} is outside the vocabulary [0, {backend.vocab_size})", "prompt")
            prompts.append(ids)
        return await respond(request, req, prompts, "prompt", False, received, tenant)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        received, tenant, req = await admitted(request, ChatCompletionRequest)
        try:
            ids = backend.tokenizer.encode_chat([m.as_template_input() for m in req.messages])
        except RequestError as exc:
            raise bad_request(str(exc), "messages") from None
        return await respond(request, req, [ids], "messages", True, received, tenant)

    async def respond(
        request: Request, req: Any, prompts: list[list[int]], field: str, chat: bool, received: float, tenant: str
    ) -> Response:
        seqs = sequences(req, prompts, field, chat)
        run = backend.open(seqs, received, tenant)  # 429 past the key's share of the queue
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        prompt_tokens = sum(len(p) for p in prompts)
        texts = [sse.TextAssembler(backend.tokenizer, s.stop) for s in seqs]
        streaming = False
        try:
            if not req.stream:
                reasons = await unless_disconnected(request, collect(run, texts))
                choices = [(sse.chat_choice if chat else sse.text_choice)(i, t.text, reasons[i]) for i, t in enumerate(texts)]
                use = sse.usage(prompt_tokens, sum(len(t.ids) for t in texts))
                return JSONResponse(
                    sse.completion_object(rid, "chat.completion" if chat else "text_completion", backend.model, choices, use)
                )
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
                raise bad_request(
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{len(ids) + max_tokens} tokens ({len(ids)} in the {field}, {max_tokens} for the "
                    f"completion). Please reduce the length of the {field} or of max_tokens.",
                    field,
                    "context_length_exceeded",
                )
            for j in range(req.n):
                seed = random.randrange(1 << 31) if req.seed is None else req.seed + j
                seqs.append(
                    SeqParams(
                        tuple(ids),
                        max_tokens,
                        1.0 if req.temperature is None else req.temperature,
                        req.top_p or 1.0,
                        max(0, req.top_k or 0),
                        seed,
                        tuple(req.stop),
                        req.ignore_eos,
                    )
                )
        return seqs

    return app
