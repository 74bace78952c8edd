"""Bench runner: cases, ratios against Helix, report JSON, plots from a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helix_jax.bench.plots import write_plots
from helix_jax.bench.report import _seconds, results_table, write_results
from helix_jax.bench.runner import BenchCase, bench_cases, run_simulated_bench
from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import ConfigError
from helix_jax.placement import FlowEdge, Placement
from helix_jax.sim import SimConfig
from helix_jax.topology import load_topology
from helix_jax.workload import FixedLengths

C = "coordinator"
TOPOLOGY = Path(__file__).resolve().parents[1] / "topologies" / "fixtures" / "two-pipelines.json"


def placements() -> dict[str, Placement]:
    both = [(C, "f-0", 100), ("f-0", "f-1", 100), ("f-1", C, 100), (C, "s-0", 40), ("s-0", "s-1", 40), ("s-1", C, 40)]
    ranges = {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)}
    slow_only = {"s-0": (0, 2), "s-1": (2, 4)}
    return {
        "helix": Placement("two-pipelines", 4, ranges, tuple(FlowEdge(*f) for f in both), method="helix", objective_tokens_per_s=140.0),
        "sp": Placement("two-pipelines", 4, slow_only, tuple(FlowEdge(*f) for f in both[3:]), method="sp", objective_tokens_per_s=40.0),
    }


def test_ratios_compare_helix_iwrr_with_every_baseline_case(tmp_path: Path) -> None:
    cost = CostModel(load_topology(TOPOLOGY), WorkloadShape(100, 30))
    cases = bench_cases(["helix", "sp"], ["iwrr", "random"], None)
    assert [c.label for c in cases] == ["helix/iwrr", "helix/random", "sp/iwrr", "sp/random"]
    report = run_simulated_bench(cost, placements(), cases, FixedLengths(100, 30), SimConfig(duration_s=900, warmup_s=300))
    helix = report.result("helix", "iwrr").metrics.decode_tokens_per_s
    ratios = {(r.baseline, r.policy): r.ratio for r in report.ratios()}
    assert set(ratios) == {("sp", "iwrr"), ("sp", "random")}
    assert ratios[("sp", "iwrr")] == pytest.approx(helix / report.result("sp", "iwrr").metrics.decode_tokens_per_s)
    assert ratios[("sp", "iwrr")] > 1.5  # the fast pipeline is worth 2.5x the slow one
    table = results_table(report)
    assert table.row_count == 4
    helix_x = list(table.columns[-1].cells)
    assert helix_x[:2] == ["-", "-"]  # Helix's own rows
    assert helix_x[2:] == [f"{ratios[('sp', p)]:.2f}x" for p in ("iwrr", "random")]
    compact = results_table(report, compact=True)  # what an 80-column console gets
    assert compact.row_count == 4 and len(compact.columns) < len(table.columns)
    assert list(compact.columns[-1].cells) == helix_x
    tpot = report.result("sp", "iwrr").metrics.tpot
    assert list(compact.columns[-2].cells)[2] == f"{tpot.p50_ms / 1e3:,.2f}/{tpot.p95_ms / 1e3:,.2f}"
    assert [_seconds(ms) for ms in (850.0, 32_345.0, 872_123.0)] == ["0.85", "32.3", "872"]
    data = json.loads(write_results(report, tmp_path).read_text())
    assert [r["method"] for r in data["results"]] == ["helix", "helix", "sp", "sp"]
    assert data["placements"]["sp"]["nodes_used"] == 2 and len(data["ratios"]) == 2
    names = {p.name for p in write_plots(report, tmp_path)}
    assert names == {"throughput.png", "latency_cdf.png"}  # no sweep: one rate


def test_bad_cases_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown scheduler 'fair'"):
        bench_cases(["helix"], ["fair"], None)
    cost = CostModel(load_topology(TOPOLOGY))
    with pytest.raises(ConfigError, match="no placement for method 'petals'"):
        run_simulated_bench(
            cost, placements(), [BenchCase("petals", "iwrr", None)], FixedLengths(5, 5), SimConfig(duration_s=10, warmup_s=1)
        )


def test_kv_concurrency_bound_by_hand() -> None:
    from helix_jax.bench.runner import kv_concurrency_bound
    from helix_jax.workload import sampled_resident_kv_tokens as resident_kv_tokens

    assert resident_kv_tokens(FixedLengths(100, 30)) == 130.0
    cost = CostModel(load_topology(TOPOLOGY), WorkloadShape(100, 30))
    budget_fast = cost.kv_budget_token_layers("fast", 2)
    budget_slow = cost.kv_budget_token_layers("slow", 2)
    # each layer is held by one fast and one slow node, each holding 2 layers
    expected = budget_fast / (2 * 130) + budget_slow / (2 * 130)
    assert kv_concurrency_bound(placements()["helix"], cost, 130.0) == pytest.approx(expected)
    assert kv_concurrency_bound(placements()["sp"], cost, 130.0) == pytest.approx(budget_slow / 260)
