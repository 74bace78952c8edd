"""Live benchmark: the simulator's workload and metrics against a running deployment.

Sits beside the simulator at the end of the data flow (runtime -> client -> **live bench** ->
metrics). It drives `helix_jax.client.AsyncClient` for a `tcp://` endpoint, or
`helix_jax.bench.openai_http.OpenAIHttpClient` (streamed /v1/completions) for an `http://`
one, so any OpenAI-compatible server is measured with the same workload and metrics:

1. Ask the deployment for its model (`info()`: vocabulary size, context limit, time scale).
2. Draw request lengths from the same `LengthSampler` as the simulator; prompts are random
   token ids (seeded) of that length, outputs are forced with `max_tokens`.
3. Offline (closed loop): keep `concurrency` requests outstanding. Online (open loop): send at
   Poisson (or trace-shaped) arrival times at `rate_per_s`.
4. Feed every token's arrival time into `MetricsCollector`, on the deployment's clock: with
   `--emulate --time-scale N` the client reports emulated seconds, and arrival gaps are
   stretched by N in wall time so the offered rate is in emulated requests/s.
5. Stop sending at `duration_s`; wait up to `drain_s` for outstanding requests, cancel the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from typing import Any, Callable, Iterator, Sequence

from helix_jax.bench.metrics import MetricsCollector, RunMetrics
from helix_jax.errors import ConfigError, HelixError, OverloadedError
from helix_jax.modelconfig import PRESETS
from helix_jax.workload import LengthSampler, seeded_arrivals

log = logging.getLogger(__name__)

FIRST_REGULAR_TOKEN_ID = 3  # skip the usual pad/bos/eos ids
DEFAULT_MAX_CONTEXT_TOKENS = 2048  # when neither --max-context nor a known preset says


@dataclasses.dataclass(frozen=True)
class LiveConfig:
    mode: str = "offline"
    duration_s: float = 60.0
    warmup_s: float = 10.0
    rate_per_s: float | None = None
    arrival_counts: tuple[int, ...] | None = None
    arrival_interval_s: float = 3.0
    concurrency: int = 8
    seed: int = 0
    temperature: float = 0.0
    max_context_tokens: int | None = None  # None: the deployment's limit
    drain_s: float = 60.0
    slo_ttft_ms: float = float("inf")
    slo_tpot_ms: float = float("inf")
    ignore_eos: bool = False  # every request runs to its sampled output length (EOS does not end it)

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online"):
            raise ConfigError(f"bench mode must be offline or online, got {self.mode!r}")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ConfigError(f"warm-up must be in [0, duration), got {self.warmup_s!r} s")
        if self.mode == "online" and not (self.rate_per_s and self.rate_per_s > 0):
            raise ConfigError(f"online mode needs a positive rate, got {self.rate_per_s!r}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")


@dataclasses.dataclass(frozen=True)
class LiveResult:
    endpoint: str
    config: LiveConfig
    metrics: RunMetrics
    deployment: dict[str, Any]
    sent: int
    completed: int
    rejected_overloaded: int
    failed: int
    cancelled: int
    wall_s: float
    ended_early: int = 0  # completed requests that stopped (EOS) before their sampled output length

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = self.metrics.to_dict(with_samples)
        d["config"].pop("arrival_counts")
        d["config"]["arrival_trace_intervals"] = len(self.config.arrival_counts or ())
        return d


class _LiveRun:
    def __init__(self, client: Any, lengths: LengthSampler, config: LiveConfig, info: dict[str, Any]):
        self.client, self.lengths, self.config = client, lengths, config
        self.time_scale = float(info.get("time_scale", 1.0) or 1.0)
        self.vocab_size = int(info.get("vocab_size", 256))
        preset = PRESETS.get(str(info.get("model", "")))
        limit = config.max_context_tokens or info.get("max_seq_len") or (preset.max_position_embeddings if preset else None)
        self.max_context = int(limit) if limit else DEFAULT_MAX_CONTEXT_TOKENS
        self.metrics = MetricsCollector(config.warmup_s, config.duration_s, config.slo_ttft_ms, config.slo_tpot_ms, config.seed)
        self.rng = random.Random(config.seed)
        self.sent = self.completed = self.rejected = self.failed = self.cancelled = self.ended_early = 0
        self.start_wall = 0.0

    def now(self) -> float:
        """Seconds since the start on the deployment's clock (emulated seconds if scaled)."""
        return (time.perf_counter() - self.start_wall) / self.time_scale

    def _request(self) -> tuple[list[int], int]:
        prompt, output = self.lengths.sample(self.rng)
        output = max(1, min(output, self.max_context // 2))
        prompt = max(1, min(prompt, self.max_context - output))
        ids = [self.rng.randrange(FIRST_REGULAR_TOKEN_ID, max(FIRST_REGULAR_TOKEN_ID + 1, self.vocab_size)) for _ in range(prompt)]
        return ids, output

    async def one(self) -> None:
        ids, output = self._request()
        sent_at = self.now()
        self.sent += 1
        try:
            result = await self.client.generate(
                ids,
                max_tokens=output,
                temperature=self.config.temperature,
                seed=self.rng.randrange(1 << 30),
                ignore_eos=self.config.ignore_eos,
            )
        except OverloadedError:
            self.rejected += 1
            return
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except HelixError as exc:
            self.failed += 1
            log.warning("request failed: %s", exc)
            return
        t = result.timings
        for token_s in t.token_times_s:
            self.metrics.on_output_tokens(sent_at + token_s, 1)
        first = sent_at + t.ttft_s
        self.metrics.on_first_token(first, t.ttft_s, result.prompt_tokens)
        self.metrics.on_complete(sent_at + t.total_s, t.ttft_s, first, len(result.ids))
        self.completed += 1
        self.ended_early += len(result.ids) < output

    def _arrivals(self) -> Iterator[float]:
        return seeded_arrivals(self.config.rate_per_s, self.config.arrival_counts, self.config.arrival_interval_s, self.config.seed)

    async def run(self, progress: Callable[[float], None] | None) -> None:
        self.start_wall = time.perf_counter()
        tasks: set[asyncio.Task] = set()
        end = self.config.duration_s
        if self.config.mode == "online":
            for at in self._arrivals():
                if at >= end:
                    break
                delay = (at - self.now()) * self.time_scale
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self.one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if progress:
                    progress(min(self.now(), end))
        else:
            while self.now() < end:
                while len(tasks) < self.config.concurrency:
                    task = asyncio.create_task(self.one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if progress:
                    progress(min(self.now(), end))
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.config.drain_s * self.time_scale)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if progress:
            progress(end)


async def run_live_bench_async(
    endpoint: str, lengths: LengthSampler, config: LiveConfig, progress: Callable[[float], None] | None = None, keys: Any = None
) -> LiveResult:
    from helix_jax.client import AsyncClient

    wall_start = time.perf_counter()
    http = endpoint.startswith(("http://", "https://"))
    if http:
        from helix_jax.bench.openai_http import OpenAIHttpClient

        client: Any = OpenAIHttpClient(endpoint, os.environ.get("HELIX_API_KEY") or os.environ.get("OPENAI_API_KEY"))
    else:
        client = AsyncClient(endpoint, keys=keys)
    try:
        info = await client.info() if http else await asyncio.to_thread(_sync_info, endpoint, keys)
        run = _LiveRun(client, lengths, config, info)
        await run.run(progress)
    finally:
        await client.close()
    return LiveResult(
        endpoint,
        config,
        run.metrics.summary(),
        info,
        run.sent,
        run.completed,
        run.rejected,
        run.failed,
        run.cancelled,
        time.perf_counter() - wall_start,
        run.ended_early,
    )


def _sync_info(endpoint: str, keys: Any = None) -> dict[str, Any]:
    from helix_jax.client import Client

    with Client(endpoint, timeout_s=30.0, keys=keys) as client:
        return client.info()


def run_live_bench(
    endpoint: str, lengths: LengthSampler, config: LiveConfig, progress: Callable[[float], None] | None = None, keys: Any = None
) -> LiveResult:
    """Blocking wrapper of `run_live_bench_async` (see the module docstring); `keys`: the
    ClientKeys of a CURVE deployment (from its connection file)."""
    return asyncio.run(run_live_bench_async(endpoint, lengths, config, progress, keys))


def rates_list(text: str | None, single: float | None) -> Sequence[float] | None:
    """Parse `--rates 1,2,4` (or a single `--rate`) into rates in requests/s."""
    if text:
        try:
            rates = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--rates must be comma-separated numbers, got {text!r}") from None
        if not rates or any(r <= 0 for r in rates):
            raise ConfigError(f"--rates must be positive, got {text!r}")
        return rates
    if single is not None:
        if single <= 0:
            raise ConfigError(f"--rate must be positive, got {single!r}")
        return [single]
    return None
