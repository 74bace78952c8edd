"""The front end's link to its deployment: one coordinator client, the tokenizer, drain.

Owns: `Backend` (the `AsyncClient` of the coordinator's client socket, the model's info,
readiness, the set of requests in flight and the graceful drain) and `Run` (one HTTP
request's sequences: one pump task per choice reads the coordinator's token stream into one
queue that the response, streamed or not, consumes). Sits in the middle of the front end's
data flow: routes -> **backend** -> coordinator (ZeroMQ) -> backend -> streaming.

Cancelling a pump (client gone, drain timeout) ends its token stream, which sends `cancel`
to the coordinator: the request leaves the scheduler and its KV is freed on every hop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Sequence

from helix_jax.client import AsyncClient
from helix_jax.errors import HelixError
from helix_jax.http.errors import APIError, from_helix, unavailable
from helix_jax.http.metrics import Metrics
from helix_jax.http.streaming import FINISH_REASONS
from helix_jax.http.tenants import ANONYMOUS, Tenants

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SeqParams:
    """One sequence to generate (one choice of one prompt)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...]
    ignore_eos: bool = False


class Run:
    """The sequences of one HTTP request in flight. `events` yields (choice index, kind, value):
    ("token", token_id), ("done", OpenAI finish reason) or ("error", APIError); an abort puts
    (None, "error", APIError). Its sequences count as waiting for `tenant` until each has its
    first token (or ends)."""

    def __init__(self, backend: "Backend", seqs: Sequence[SeqParams], received_at: float, tenant: str = ANONYMOUS) -> None:
        self.backend, self.seqs, self.received_at, self.tenant = backend, tuple(seqs), received_at, tenant
        self._waiting = set(range(len(self.seqs)))
        self._cancelled = False
        self.events: asyncio.Queue[tuple[int | None, str, Any]] = asyncio.Queue()
        self.pumps = [asyncio.create_task(self._pump(i, p)) for i, p in enumerate(self.seqs)]

    async def _pump(self, index: int, p: SeqParams) -> None:
        b = self.backend
        assert b.client is not None, "the backend is not started"
        stream = b.client.stream(
            list(p.prompt_ids),
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            seed=p.seed,
            stop=list(p.stop) or None,
            ignore_eos=p.ignore_eos,
        )
        first = last = None
        tokens, reason = 0, "error"
        try:
            async for tok in stream:
                last = time.perf_counter()
                first = first or last
                self._started(index)
                tokens += 1
                self.events.put_nowait((index, "token", tok.token_id))
                if tok.token_id in b.extra_stop_ids and not p.ignore_eos:  # the chat template's end of turn
                    reason = "stop"
                    break
            else:
                assert stream.result is not None
                reason = FINISH_REASONS.get(stream.result.finish_reason, "stop")
            self.events.put_nowait((index, "done", reason))
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except HelixError as exc:
            self.events.put_nowait((index, "error", from_helix(exc)))
        finally:
            self._started(index)
            await stream.aclose()  # not finished: `cancel` to the coordinator, which frees its KV
            scale, end = b.time_scale, time.perf_counter()
            result = stream.result
            b.metrics.observe_sequence(
                reason,
                len(p.prompt_ids),
                tokens,
                None if first is None else (first - self.received_at) / scale,
                (end - self.received_at) / scale,
                (last - first) / (tokens - 1) / scale if first is not None and last is not None and tokens > 1 else None,
                result.queue_s if result is not None else None,
            )

    def _started(self, index: int) -> None:
        if index in self._waiting:
            self._waiting.discard(index)
            self.backend.tenants.started(self.tenant)

    def stop_waiting(self) -> None:
        for index in list(self._waiting):
            self._started(index)

    def abort(self, err: APIError) -> None:
        """End every sequence with `err` (the drain's timeout)."""
        self.cancel()
        self.events.put_nowait((None, "error", err))

    def cancel(self) -> None:
        """Cancel the pumps, once: a second cancel (the response's own close after the drain's, or
        after its stream's) could land in a pump's clean-up and cut off its `cancel` message."""
        if self._cancelled:
            return
        self._cancelled = True
        for pump in self.pumps:
            pump.cancel()


class Backend:
    """Shared by every route of one app; `start()` and `close()` run in the app's event loop."""

    def __init__(
        self, endpoint: str, tokenizer: Any, served_model: str | None = None, request_timeout_s: float = 3600.0, keys: Any = None
    ) -> None:
        self.endpoint, self.tokenizer, self.served_model = endpoint, tokenizer, served_model
        self.keys = keys  # security.ClientKeys of a CURVE deployment (None: plain TCP)
        self.request_timeout_s = request_timeout_s
        self.metrics = Metrics()
        self.tenants = Tenants()  # create_app installs the configured keys and share
        eos = getattr(tokenizer, "eos_token_id", None)
        stops = getattr(tokenizer, "stop_token_ids", None) or ({eos} if eos is not None else set())
        self.extra_stop_ids = frozenset(stops) - {eos}  # the coordinator stops at EOS itself
        self.client: AsyncClient | None = None
        self._stats_client: AsyncClient | None = None
        self.model = served_model or ""
        self.max_seq_len = 0
        self.vocab_size = 0
        self.time_scale = 1.0
        self.started_at = int(time.time())
        self.ready, self.reason = False, "not started"
        self.draining = False
        self._runs: set[Run] = set()
        self._idle: asyncio.Event | None = None

    async def start(self) -> None:
        self.client = AsyncClient(self.endpoint, timeout_s=self.request_timeout_s, keys=self.keys)
        self._stats_client = AsyncClient(self.endpoint, timeout_s=10.0, keys=self.keys)
        info = await self._stats_client.info()
        self.model = self.served_model or info["model"]
        self.max_seq_len = int(info.get("max_seq_len") or 0)
        self.vocab_size = int(info["vocab_size"])
        self.time_scale = float(info.get("time_scale") or 1.0)
        self._idle = asyncio.Event()
        self._idle.set()
        self.tenants.set_queue_limit(int((await self.stats()).get("queue_limit") or 1000))

    async def close(self) -> None:
        for run in list(self._runs):
            run.cancel()
        for client in (self.client, self._stats_client):
            if client is not None:
                await client.close()

    async def stats(self) -> dict[str, Any]:
        """The coordinator's serving stats, fresh; refreshes the cached readiness."""
        assert self._stats_client is not None
        try:
            stats = await self._stats_client.stats()
        except HelixError as exc:
            self.ready, self.reason = False, f"the coordinator at {self.endpoint} does not answer: {exc}"
            raise unavailable(self.reason, "not_ready") from None
        self.ready, self.reason = bool(stats["ready"]), str(stats.get("reason") or "")
        return stats

    async def ensure_serving(self) -> None:
        """503 while draining or not ready (readiness re-checked only while it is false: a lost
        layer shows up as the coordinator's error on the request itself)."""
        if self.draining:
            raise unavailable("the server is shutting down and accepts no new requests", "draining")
        if not self.ready:
            await self.stats()
            if not self.ready:
                raise unavailable(f"the deployment is not ready: {self.reason}", "not_ready")

    def open(self, seqs: Sequence[SeqParams], received_at: float, tenant: str = ANONYMOUS) -> Run:
        """Start a request's sequences for `tenant`: 429 if that passes its share of the queue."""
        self.tenants.admit(tenant, len(seqs))
        run = Run(self, seqs, received_at, tenant)
        self._runs.add(run)
        assert self._idle is not None
        self._idle.clear()
        return run

    def close_run(self, run: Run) -> None:
        run.cancel()
        run.stop_waiting()  # a pump cancelled before it began never reports
        self._runs.discard(run)
        if not self._runs and self._idle is not None:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._runs)

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests, wait up to `timeout_s` for those in flight, abort the rest with a
        clear error; returns how many were aborted."""
        self.draining = True
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return 0
        except asyncio.TimeoutError:
            pass
        left = list(self._runs)
        err = unavailable(
            f"the server is shutting down: this request was cancelled after the {timeout_s:g} s shutdown timeout", "shutting_down"
        )
        for run in left:
            run.abort(err)
        try:  # the responses now end at once; wait for them to be written
            await asyncio.wait_for(self._idle.wait(), 10.0)
        except asyncio.TimeoutError:
            logger.warning("%d request(s) still open after the drain", len(self._runs))
        return len(left)
