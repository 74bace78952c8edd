"""Sampling parameters of one request: what the coordinator validates at admission and sends.

Owns: `SamplingParams` (frozen, validated: one RequestError naming the field). Imports no jax,
so the coordinator, the client and the HTTP front end can build and check them; the sampling
itself (`sampling.sample_tokens`) runs traced on the last stage.
"""

from __future__ import annotations

import dataclasses

from helix_jax.errors import RequestError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = no limit; top_p 1.0 = no nucleus cut."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0) or self.temperature != self.temperature:
            raise RequestError(f"sampling temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise RequestError(f"sampling top_k must be an integer >= 0, got {self.top_k!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise RequestError(f"sampling top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, int) or not (0 <= self.seed < 2**32):
            raise RequestError(f"sampling seed must be an integer in [0, 2**32), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
