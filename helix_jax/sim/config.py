"""Simulation settings (frozen): what one simulated run does, independent of the cluster.

Sits beside the simulator engine: placement + cost model + workload + **SimConfig** -> run.
"""

from __future__ import annotations

import dataclasses
import math

from helix_jax.errors import ConfigError

MODES = ("offline", "online")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """One run's settings.

    * `mode="offline"`: closed loop; `offline_queue_depth` requests always wait at the head of
      the scheduler's queue, so the cluster is kept as full as KV admission allows.
    * `mode="online"`: open loop; Poisson arrivals at `rate_per_s`, or, with
      `arrival_counts`, a non-homogeneous Poisson process shaped like those per-interval
      counts (`arrival_interval_s` each) at the same mean rate; or, with `arrival_times_s`,
      exactly those arrival times (a replay; no rate needed).
    * Metrics count only `[warmup_s, duration_s)` of simulated time.
    """

    mode: str = "offline"
    duration_s: float = 600.0
    warmup_s: float = 60.0
    rate_per_s: float | None = None
    arrival_counts: tuple[int, ...] | None = None
    arrival_interval_s: float = 3.0
    arrival_times_s: tuple[float, ...] | None = None
    policy: str = "iwrr"
    seed: int = 0
    queue_limit: int = 100_000
    offline_queue_depth: int = 8
    min_edge_share: float = 0.05
    slo_ttft_ms: float = math.inf
    slo_tpot_ms: float = math.inf

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"simulation mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.duration_s > 0:
            raise ConfigError(f"duration must be positive, got {self.duration_s!r} s")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ConfigError(f"warm-up must be in [0, duration) = [0, {self.duration_s}), got {self.warmup_s!r} s")
        if self.arrival_times_s is not None and any(b < a for a, b in zip(self.arrival_times_s, self.arrival_times_s[1:])):
            raise ConfigError("arrival_times_s must be sorted")
        if self.mode == "online" and self.arrival_times_s is None and not (self.rate_per_s is not None and self.rate_per_s > 0):
            raise ConfigError(f"online mode needs a positive arrival rate, got {self.rate_per_s!r} requests/s")
        if self.offline_queue_depth < 1:
            raise ConfigError(f"offline_queue_depth must be >= 1, got {self.offline_queue_depth}")
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
