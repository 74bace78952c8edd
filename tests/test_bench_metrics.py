"""Metrics: windows, percentiles, goodput, bounded reservoirs."""

from __future__ import annotations

import math

import pytest

from helix_jax.bench.metrics import MetricsCollector, Reservoir, percentile


def test_percentile_interpolates() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert math.isnan(percentile([], 50))


def test_reservoir_is_bounded_and_exact_in_count_and_mean() -> None:
    r = Reservoir(capacity=100, seed=0)
    for i in range(10_000):
        r.add(float(i))
    assert len(r.values) == 100 and r.count == 10_000
    assert r.mean == pytest.approx(4999.5)
    assert 3000 < sorted(r.values)[50] < 7000  # a uniform sample, not the first 100


def test_collector_counts_only_the_window_and_applies_slos() -> None:
    m = MetricsCollector(warmup_s=10.0, end_s=20.0, slo_ttft_ms=500.0, slo_tpot_ms=100.0)
    m.on_output_tokens(5.0, 7)  # before the window
    m.on_output_tokens(12.0, 30)
    m.on_output_tokens(20.0, 9)  # at the end: excluded
    m.on_first_token(11.0, 0.4, prompt_tokens=100)
    m.on_first_token(9.0, 0.1, prompt_tokens=1000)  # excluded
    # good: ttft 0.4 s, tpot (15 - 11) / 40 = 0.1 s
    m.on_complete(15.0, ttft_s=0.4, first_token_s=11.0, output_tokens=41)
    # bad tpot: (19 - 11) / 20 = 0.4 s
    m.on_complete(19.0, ttft_s=0.2, first_token_s=11.0, output_tokens=21)
    s = m.summary()
    assert s.decode_tokens_per_s == pytest.approx(3.0)
    assert s.total_tokens_per_s == pytest.approx(13.0)
    assert s.requests_per_s == pytest.approx(0.2)
    assert s.goodput_requests_per_s == pytest.approx(0.1)
    assert s.ttft.mean_ms == pytest.approx(400.0)
    assert s.tpot.mean_ms == pytest.approx(250.0)
    assert s.tpot.p50_ms == pytest.approx(250.0)
    d = s.to_dict()
    assert "ttft_samples_s" not in d and d["ttft"]["count"] == 1
