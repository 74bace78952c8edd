"""Metrics: streaming aggregates of a run (simulated or live) and their summary.

Owns the last step of the data flow (simulator / runtime -> **metrics**). Memory does not
grow with the run: counters and sums for throughput, and bounded seeded reservoirs for the
latency percentiles and CDF plots. Only events inside the measurement window
`[warmup_s, end_s)` count:

* decode throughput: output tokens that reach the coordinator in the window / window length
  (every output token is one pass through the route; the first comes from the prefill);
* total throughput: those plus the prompt tokens whose prefill finished in the window;
* requests/s: completions in the window; TTFT: requests whose first token lands in the window
  (arrival -> first token, queueing included); TPOT: completed requests, (last - first token)
  / (output tokens - 1);
* goodput: completions in the window meeting both SLOs (TTFT <= slo_ttft_ms, TPOT <= slo_tpot_ms).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

RESERVOIR_SIZE = 20_000


class Reservoir:
    """A uniform sample of at most `capacity` values out of a stream (Vitter's algorithm R),
    plus the exact count and sum."""

    def __init__(self, capacity: int = RESERVOIR_SIZE, seed: int = 0):
        self.capacity = capacity
        self.values: list[float] = []
        self.count = 0
        self.total = 0.0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if len(self.values) < self.capacity:
            self.values.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self.capacity:
                self.values[j] = value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of an already sorted list."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @classmethod
    def of(cls, reservoir: Reservoir) -> "LatencySummary":
        values = sorted(reservoir.values)
        ms = 1000.0
        return cls(
            reservoir.count, reservoir.mean * ms, percentile(values, 50) * ms, percentile(values, 95) * ms, percentile(values, 99) * ms
        )


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """Everything one run reports (all rates over the measurement window)."""

    window_s: float
    decode_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float
    goodput_requests_per_s: float
    ttft: LatencySummary
    tpot: LatencySummary
    completed: int  # completions in the window
    output_tokens: int  # output tokens in the window
    slo_ttft_ms: float
    slo_tpot_ms: float
    ttft_samples_s: tuple[float, ...] = ()  # reservoir, for CDF plots
    tpot_samples_s: tuple[float, ...] = ()

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_samples:
            d.pop("ttft_samples_s")
            d.pop("tpot_samples_s")
        return d


class MetricsCollector:
    """Streaming sink for one run; times are seconds on one clock (simulated or wall)."""

    def __init__(self, warmup_s: float, end_s: float, slo_ttft_ms: float = math.inf, slo_tpot_ms: float = math.inf, seed: int = 0):
        if not 0 <= warmup_s < end_s:
            raise ValueError(f"measurement window [{warmup_s}, {end_s}) is empty")
        self.warmup_s, self.end_s = warmup_s, end_s
        self.slo_ttft_s, self.slo_tpot_s = slo_ttft_ms / 1000.0, slo_tpot_ms / 1000.0
        self.slo_ttft_ms, self.slo_tpot_ms = slo_ttft_ms, slo_tpot_ms
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.completed = 0
        self.good = 0
        self.ttft = Reservoir(seed=seed)
        self.tpot = Reservoir(seed=seed + 1)

    def in_window(self, t: float) -> bool:
        return self.warmup_s <= t < self.end_s

    def on_output_tokens(self, t: float, count: int) -> None:
        if self.warmup_s <= t < self.end_s:
            self.output_tokens += count

    def on_first_token(self, t: float, ttft_s: float, prompt_tokens: int) -> None:
        if self.warmup_s <= t < self.end_s:
            self.prompt_tokens += prompt_tokens
            self.ttft.add(ttft_s)

    def on_complete(self, t: float, ttft_s: float, first_token_s: float, output_tokens: int) -> None:
        if not (self.warmup_s <= t < self.end_s):
            return
        self.completed += 1
        tpot_s = (t - first_token_s) / (output_tokens - 1) if output_tokens > 1 else 0.0
        if output_tokens > 1:
            self.tpot.add(tpot_s)
        if ttft_s <= self.slo_ttft_s and tpot_s <= self.slo_tpot_s:
            self.good += 1

    def summary(self) -> RunMetrics:
        window = self.end_s - self.warmup_s
        return RunMetrics(
            window_s=window,
            decode_tokens_per_s=self.output_tokens / window,
            total_tokens_per_s=(self.output_tokens + self.prompt_tokens) / window,
            requests_per_s=self.completed / window,
            goodput_requests_per_s=self.good / window,
            ttft=LatencySummary.of(self.ttft),
            tpot=LatencySummary.of(self.tpot),
            completed=self.completed,
            output_tokens=self.output_tokens,
            slo_ttft_ms=self.slo_ttft_ms,
            slo_tpot_ms=self.slo_tpot_ms,
            ttft_samples_s=tuple(self.ttft.values),
            tpot_samples_s=tuple(self.tpot.values),
        )
