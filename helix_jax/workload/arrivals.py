"""Arrival times: when each request of an open-loop run is sent.

Owns the arrival processes the simulator and the live bench share (workload -> simulator or
live bench): `poisson_arrivals` (open loop at a rate) and `shaped_arrivals` (a non-homogeneous
Poisson process whose intensity follows a trace's per-interval counts, scaled to a rate; CSV
column `requests_in_3s`, read by `load_arrival_counts`); `seeded_arrivals` picks one of them
for a run. Touches only the errors and the trace-file readers of lengths.py.
Everything is driven by an explicit seed: same seed, same arrivals.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator, Sequence

from helix_jax.errors import ConfigError
from helix_jax.workload.lengths import non_negative_int, read_csv_rows


def poisson_arrivals(rate_per_s: float | None, rng: random.Random, start_s: float = 0.0) -> Iterator[float]:
    """Endless arrival times of a Poisson process with `rate_per_s` requests per second."""
    if rate_per_s is None or not rate_per_s > 0:
        raise ConfigError(f"arrival rate must be positive, got {rate_per_s!r} requests/s")
    t = start_s
    while True:
        t += rng.expovariate(rate_per_s)
        yield t


def shaped_arrivals(counts: Sequence[int], interval_s: float, rate_per_s: float | None, rng: random.Random) -> Iterator[float]:
    """Endless arrival times whose intensity in interval i is `rate * counts[i] / mean(counts)`
    (the trace is repeated when it runs out): a trace's burstiness at a chosen mean rate."""
    if rate_per_s is None or not rate_per_s > 0:
        raise ConfigError(f"arrival rate must be positive, got {rate_per_s!r} requests/s")
    if not interval_s > 0:
        raise ConfigError(f"arrival interval must be positive, got {interval_s!r} s")
    total = sum(counts)
    if not counts or total <= 0:
        raise ConfigError("an arrivals trace needs at least one interval with a positive count")
    scale = rate_per_s * len(counts) / total
    t, i = 0.0, 0
    while True:
        start = i * interval_s
        intensity = counts[i % len(counts)] * scale
        t = max(t, start)
        end = start + interval_s
        while intensity > 0:
            t += rng.expovariate(intensity)
            if t >= end:
                break
            yield t
        t = end  # memorylessness: restart the clock at the next interval
        i += 1


ARRIVAL_SEED_OFFSET = 7919  # arrivals draw from their own stream, apart from the lengths


def seeded_arrivals(rate_per_s: float | None, counts: Sequence[int] | None, interval_s: float, seed: int) -> Iterator[float]:
    """The open-loop arrival process the simulator and the live bench share: `shaped_arrivals`
    when a trace's `counts` are given, else `poisson_arrivals`, seeded from `seed`."""
    rng = random.Random(seed + ARRIVAL_SEED_OFFSET)
    if counts:
        return shaped_arrivals(counts, interval_s, rate_per_s, rng)
    return poisson_arrivals(rate_per_s, rng)


def load_arrival_counts(path: str | Path, column: str = "requests_in_3s") -> list[int]:
    return [non_negative_int(row[column], path, line) for line, row in read_csv_rows(path, (column,))]
