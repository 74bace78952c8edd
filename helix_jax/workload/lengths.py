"""Request lengths: the (prompt tokens, output tokens) of every request a run sends.

Owns the length samplers (workload -> cost model and planner, which price capacities by a
sampler's `shape`; -> simulator and live bench, which draw requests from it):

* `AzureConversationLengths` (built-in, seeded, fitted to the Azure conversation trace
  statistics of HELIX.md section 8), `FixedLengths`, `TraceLengths` (a CSV with
  `input_tokens,output_tokens` columns, e.g. ../shared/data/azure_conv_lengths.csv, read at
  run time and sampled with replacement); each knows its `shape` (mean prompt and output
  lengths, spread of outputs), which the cost model prices capacities by, so the planner plans
  for the workload a bench runs;
* `read_csv_rows` and the integer checks that trace files (here and arrivals.py) share.

Touches only the workload shape (shape.py) and the errors: no cost model, no simulator.
Everything is driven by an explicit seed: same seed, same requests.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
from pathlib import Path
from typing import Protocol

from helix_jax.errors import ConfigError
from helix_jax.workload.shape import WorkloadShape

MAX_PROMPT_TOKENS = 2048  # the Azure trace's clipping
MAX_OUTPUT_TOKENS = 1000


class LengthSampler(Protocol):
    @property
    def name(self) -> str: ...

    def sample(self, rng: random.Random) -> tuple[int, int]:
        """(prompt_tokens, output_tokens), both >= 1."""
        ...

    @property
    def mean_lengths(self) -> tuple[float, float]: ...

    @property
    def shape(self) -> WorkloadShape:
        """What the cost model (and so the planner) assumes of these requests."""
        ...


@dataclasses.dataclass(frozen=True)
class AzureConversationLengths:
    """A three-part mixture fitted to the Azure conversation trace (16,657 requests).

    The trace's prompts are bimodal (short chats around 300 tokens, long ones around 1,080,
    a thin tail to 2,048) and outputs depend on the mode, so one lognormal cannot fit both
    the mean (763) and the median (947) of the prompts. Fitted targets -> this generator
    (100k draws): prompt mean 763 / median 947 / p90 1273 -> 776 / 924 / 1239; output mean
    232 / median 157 / p90 429 -> 226 / 162 / 442.
    """

    name: str = "azure-conv"
    short_weight: float = 0.46  # short chats: lognormal prompt and output
    short_prompt_median: float = 300.0
    short_prompt_sigma: float = 0.55
    short_output_median: float = 100.0
    short_output_sigma: float = 0.56
    long_weight: float = 0.487  # long chats: normal prompt, two-part output
    long_prompt_mean: float = 1080.0
    long_prompt_sd: float = 120.0
    long_output_peak: float = 415.0
    long_output_peak_sd: float = 45.0
    long_output_peak_share: float = 0.7
    long_output_low_median: float = 150.0
    tail_prompt_range: tuple[float, float] = (1350.0, 2048.0)  # the rest: uniform prompt
    tail_output_median: float = 90.0

    def sample(self, rng: random.Random) -> tuple[int, int]:
        u = rng.random()
        if u < self.short_weight:
            prompt = rng.lognormvariate(math.log(self.short_prompt_median), self.short_prompt_sigma)
            output = rng.lognormvariate(math.log(self.short_output_median), self.short_output_sigma)
        elif u < self.short_weight + self.long_weight:
            prompt = rng.gauss(self.long_prompt_mean, self.long_prompt_sd)
            if rng.random() < self.long_output_peak_share:
                output = rng.gauss(self.long_output_peak, self.long_output_peak_sd)
            else:
                output = rng.lognormvariate(math.log(self.long_output_low_median), 0.6)
        else:
            prompt = rng.uniform(*self.tail_prompt_range)
            output = rng.lognormvariate(math.log(self.tail_output_median), 0.5)
        return (min(MAX_PROMPT_TOKENS, max(8, round(prompt))), min(MAX_OUTPUT_TOKENS, max(1, round(output))))

    @property
    def mean_lengths(self) -> tuple[float, float]:
        return 763.0, 232.0

    @property
    def shape(self) -> WorkloadShape:
        return WorkloadShape()  # the cost model's default: the trace statistics fitted here


@dataclasses.dataclass(frozen=True)
class FixedLengths:
    prompt_tokens: int
    output_tokens: int
    name: str = "fixed"

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ConfigError(f"fixed lengths must be positive, got prompt {self.prompt_tokens} and output {self.output_tokens}")

    def sample(self, rng: random.Random) -> tuple[int, int]:
        return self.prompt_tokens, self.output_tokens

    @property
    def mean_lengths(self) -> tuple[float, float]:
        return float(self.prompt_tokens), float(self.output_tokens)

    @property
    def shape(self) -> WorkloadShape:
        return WorkloadShape(float(self.prompt_tokens), float(self.output_tokens), 1.0)


@dataclasses.dataclass(frozen=True)
class TraceLengths:
    """Lengths drawn with replacement from a trace's rows."""

    prompts: tuple[int, ...]
    outputs: tuple[int, ...]
    name: str = "trace"

    def sample(self, rng: random.Random) -> tuple[int, int]:
        i = rng.randrange(len(self.prompts))
        return self.prompts[i], self.outputs[i]

    @property
    def mean_lengths(self) -> tuple[float, float]:
        return sum(self.prompts) / len(self.prompts), sum(self.outputs) / len(self.outputs)

    @property
    def shape(self) -> WorkloadShape:
        """The trace's own moments (the code trace: prompts 1379, outputs 27.5, ratio 5.0)."""
        mean_prompt, mean_output = self.mean_lengths
        second = sum(o * o for o in self.outputs) / len(self.outputs)
        return WorkloadShape(mean_prompt, mean_output, max(1.0, second / mean_output**2))

    @classmethod
    def load(cls, path: str | Path) -> "TraceLengths":
        rows = read_csv_rows(path, ("input_tokens", "output_tokens"))
        prompts, outputs = [], []
        for line, row in rows:
            p, o = positive_int(row["input_tokens"], path, line), positive_int(row["output_tokens"], path, line)
            prompts.append(p)
            outputs.append(o)
        return cls(tuple(prompts), tuple(outputs), name=Path(path).stem)


def length_sampler(trace: str | Path | None = None, prompt_tokens: int | None = None, output_tokens: int | None = None) -> LengthSampler:
    """The lengths a bench run uses: a trace file, fixed lengths, or the built-in generator."""
    if trace is not None:
        return TraceLengths.load(trace)
    if prompt_tokens is not None or output_tokens is not None:
        if prompt_tokens is None or output_tokens is None:
            raise ConfigError("fixed lengths need both --prompt-tokens and --output-tokens")
        return FixedLengths(prompt_tokens, output_tokens)
    return AzureConversationLengths()


def read_csv_rows(path: str | Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"trace file {str(p)!r} does not exist")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{p.name} lacks the column(s) {', '.join(missing)} (has {', '.join(reader.fieldnames or []) or 'none'})")
        rows = [(n + 2, row) for n, row in enumerate(reader)]
    if not rows:
        raise ConfigError(f"{p.name} has no rows")
    return rows


def positive_int(value: str, path: str | Path, line: int) -> int:
    n = non_negative_int(value, path, line)
    if n < 1:
        raise ConfigError(f"{Path(path).name} line {line}: token counts must be positive, got {value!r}")
    return n


def non_negative_int(value: str, path: str | Path, line: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{Path(path).name} line {line}: {value!r} is not an integer") from None
    if n < 0:
        raise ConfigError(f"{Path(path).name} line {line}: {value!r} is negative")
    return n
