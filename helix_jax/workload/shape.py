"""WorkloadShape: what "tokens/s" assumes about requests (mean prompt and output lengths).

The one definition shared by the planner (capacities are priced for a shape), the placement
(a typed field: `Placement.workload`, the shape it was planned for), the cost model, the
simulator and the length samplers (lengths.py). Plain data, no imports beyond the errors, so
placement.py and the cost model both depend on it and not on each other.

Owns the **resident KV tokens** of a request, E[(p + o) o] / E[o]: from a shape's moments
(`WorkloadShape.resident_kv_tokens`, what the cost model budgets) and from a sampler's draws
(`sampled_resident_kv_tokens`, what the simulated bench reports); nothing else computes it.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Any

from helix_jax.errors import ConfigError

if TYPE_CHECKING:
    from helix_jax.workload.lengths import LengthSampler


@dataclasses.dataclass(frozen=True)
class WorkloadShape:
    """What "tokens/s" assumes about requests (Azure conversation trace means)."""

    mean_prompt_tokens: float = 763.0
    mean_output_tokens: float = 232.0
    # E[o^2] / E[o]^2 of output lengths: long answers stay resident longer, so the KV a resident
    # request holds (reserved up front as prompt + output) is residence-weighted. 2.2 is the
    # Azure conversation trace's figure (1273 resident tokens against 995 mean tokens).
    output_length_second_moment_ratio: float = 2.2

    def __post_init__(self) -> None:
        if not (self.mean_prompt_tokens >= 0 and self.mean_output_tokens > 0):
            raise ConfigError(f"workload needs mean_prompt_tokens >= 0 and mean_output_tokens > 0, got {self}")
        if not self.output_length_second_moment_ratio >= 1:  # E[o^2] >= E[o]^2 for any lengths
            raise ConfigError(f"workload needs output_length_second_moment_ratio >= 1, got {self}")

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: Any) -> "WorkloadShape":
        """A shape from `to_dict`'s output; the default shape for None (placement files written
        before shapes were recorded)."""
        if raw is None:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) - names:
            raise ConfigError(f"a workload shape is an object with the fields {', '.join(sorted(names))}, got {raw!r}")
        try:
            return cls(**{k: float(v) for k, v in raw.items()})
        except (TypeError, ValueError):
            raise ConfigError(f"a workload shape needs numbers, got {raw!r}") from None

    @classmethod
    def recorded_in(cls, placement: Any) -> "WorkloadShape":
        """The shape a Placement was planned for (`placement.workload`; the default shape for a
        placement file written before shapes were recorded)."""
        return placement.workload or cls()

    def describe(self) -> str:
        return (
            f"mean prompt {self.mean_prompt_tokens:.0f} tokens, mean output {self.mean_output_tokens:.1f} "
            f"tokens, E(o^2)/E(o)^2 {self.output_length_second_moment_ratio:.2f}"
        )

    @property
    def prompt_per_output(self) -> float:
        """Prompt tokens of prefill each decode token pays for."""
        return self.mean_prompt_tokens / self.mean_output_tokens

    @property
    def average_context_tokens(self) -> float:
        return self.mean_prompt_tokens + self.mean_output_tokens / 2

    @property
    def resident_kv_tokens(self) -> float:
        """KV tokens per layer a resident request holds, averaged over time: the KV ledger
        reserves prompt + output for the request's whole life, and a request's life is
        proportional to its output length, so E[(p + o) o] / E[o]."""
        return self.mean_prompt_tokens + self.mean_output_tokens * self.output_length_second_moment_ratio


def sampled_resident_kv_tokens(lengths: "LengthSampler", samples: int = 20_000, seed: int = 0) -> float:
    """Reserved KV tokens of the average request *in flight*, from `samples` draws of `lengths`:
    a request holds prompt + output for a time proportional to its output, so this is
    E[(P + O) O] / E[O] (1254 for the Azure mix, against E[P + O] = 1003). The property
    `WorkloadShape.resident_kv_tokens` is the same quantity from the shape's moments."""
    rng = random.Random(seed)
    draws = [lengths.sample(rng) for _ in range(samples)]
    return sum((p + o) * o for p, o in draws) / sum(o for _, o in draws)
