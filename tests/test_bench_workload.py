"""Workloads: the built-in Azure-like generator, trace files, arrival processes."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from helix_jax.costmodel import WorkloadShape
from helix_jax.errors import ConfigError
from helix_jax.workload import (
    AzureConversationLengths,
    FixedLengths,
    TraceLengths,
    length_sampler,
    load_arrival_counts,
    poisson_arrivals,
    shaped_arrivals,
)


def test_azure_generator_matches_the_published_statistics() -> None:
    rng = random.Random(0)
    draws = [AzureConversationLengths().sample(rng) for _ in range(40_000)]
    prompts = sorted(p for p, _ in draws)
    outputs = sorted(o for _, o in draws)
    n = len(draws)
    # HELIX.md section 8: input mean 763 / median 947 / p90 1273; output 232 / 157 / 429
    for got, want in (
        (statistics.fmean(prompts), 763),
        (prompts[n // 2], 947),
        (prompts[int(0.9 * n)], 1273),
        (statistics.fmean(outputs), 232),
        (outputs[n // 2], 157),
        (outputs[int(0.9 * n)], 429),
    ):
        assert got == pytest.approx(want, rel=0.06)
    assert max(prompts) <= 2048 and max(outputs) <= 1000 and min(prompts) >= 1 and min(outputs) >= 1


def test_generator_is_seeded() -> None:
    gen = AzureConversationLengths()
    a = [gen.sample(random.Random(1)) for _ in range(3)]
    b = [gen.sample(random.Random(1)) for _ in range(3)]
    assert a == b
    r1, r2 = random.Random(1), random.Random(2)
    assert [gen.sample(r1) for _ in range(20)] != [gen.sample(r2) for _ in range(20)]


def test_trace_file_is_sampled_and_validated(tmp_path: Path) -> None:
    good = tmp_path / "lengths.csv"
    good.write_text("input_tokens,output_tokens\n100,10\n300,30\n")
    trace = TraceLengths.load(good)
    rng = random.Random(0)
    assert {trace.sample(rng) for _ in range(50)} == {(100, 10), (300, 30)}
    assert trace.mean_lengths == (200.0, 20.0)
    assert isinstance(length_sampler(trace=good), TraceLengths)
    assert length_sampler(prompt_tokens=5, output_tokens=6) == FixedLengths(5, 6)
    bad = tmp_path / "bad.csv"
    bad.write_text("input_tokens,output_tokens\n100,x\n")
    with pytest.raises(ConfigError, match="bad.csv line 2: 'x' is not an integer"):
        TraceLengths.load(bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("prompt,output\n1,2\n")
    with pytest.raises(ConfigError, match="lacks the column"):
        TraceLengths.load(wrong)
    with pytest.raises(ConfigError, match="does not exist"):
        TraceLengths.load(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="both --prompt-tokens and --output-tokens"):
        length_sampler(prompt_tokens=5)


def test_each_workload_knows_the_shape_the_planner_prices(tmp_path: Path) -> None:
    """The cost model's WorkloadShape of a trace is its own moments: rows (100, 10) and (300, 30)
    give mean prompt 200, mean output 20 and E[o^2] / E[o]^2 = ((100 + 900) / 2) / 400 = 1.25."""
    path = tmp_path / "lengths.csv"
    path.write_text("input_tokens,output_tokens\n100,10\n300,30\n")
    shape = TraceLengths.load(path).shape
    assert (shape.mean_prompt_tokens, shape.mean_output_tokens) == (200.0, 20.0)
    assert shape.output_length_second_moment_ratio == pytest.approx(1.25)
    assert shape.resident_kv_tokens == pytest.approx(200 + 20 * 1.25)  # E[(p + o) o] / E[o] = 225
    fixed = FixedLengths(50, 7).shape
    assert (fixed.mean_prompt_tokens, fixed.mean_output_tokens, fixed.output_length_second_moment_ratio) == (50, 7, 1)
    assert AzureConversationLengths().shape == WorkloadShape()  # the default is the Azure trace's


def test_poisson_arrivals_have_the_rate() -> None:
    arrivals = poisson_arrivals(4.0, random.Random(0))
    times = [next(arrivals) for _ in range(20_000)]
    assert times == sorted(times)
    assert len(times) / times[-1] == pytest.approx(4.0, rel=0.03)
    with pytest.raises(ConfigError, match="arrival rate must be positive"):
        next(poisson_arrivals(0.0, random.Random(0)))


def test_shaped_arrivals_follow_interval_counts(tmp_path: Path) -> None:
    counts = [0, 30, 10]  # mean 13.3 per 3 s interval; scaled to 2 requests/s
    arrivals = shaped_arrivals(counts, 3.0, 2.0, random.Random(0))
    per_interval = [0, 0, 0]
    t = next(arrivals)
    while t < 3 * 3.0 * 400:
        per_interval[int(t // 3.0) % 3] += 1
        t = next(arrivals)
    total = sum(per_interval)
    assert total / (9.0 * 400) == pytest.approx(2.0, rel=0.05)
    assert per_interval[0] == 0
    assert per_interval[1] / per_interval[2] == pytest.approx(3.0, rel=0.15)
    f = tmp_path / "arrivals.csv"
    f.write_text("requests_in_3s\n1\n3\n")
    assert load_arrival_counts(f) == [1, 3]


def test_shaped_arrivals_reject_a_non_positive_interval() -> None:
    for interval_s in (0.0, -3.0):  # would loop forever without yielding
        with pytest.raises(ConfigError, match=f"arrival interval must be positive, got {interval_s}"):
            next(shaped_arrivals([1, 2], interval_s, 1.0, random.Random(0)))
