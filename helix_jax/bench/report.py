"""Bench reports: one rich table of every case, the Helix ratios, and results.json.

Sits last in the data flow (simulator or live run -> metrics -> **report**). The table has one
row per (method, scheduler, rate) with throughput, latency percentiles, goodput and the share
of the placement's max-flow; `write_results` stores every figure with the exact settings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from helix_jax.bench.live import LiveResult
from helix_jax.bench.runner import BenchReport


def _num(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:,.{digits}f}"


COMPACT_BELOW_COLUMNS = 150  # narrower consoles get the compact table


def _seconds(ms: float) -> str:
    """Milliseconds as seconds in at most ~5 characters: 0.85, 32.3, 872."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    return _num(ms / 1e3, 0 if ms >= 100e3 else 1 if ms >= 10e3 else 2)


def results_table(report: BenchReport, compact: bool = False) -> Table:
    """One row per method x scheduler (x rate). `compact` keeps what fits 80 columns: decode
    tokens/s, requests/s, max-flow and the share of it, TTFT and TPOT p50/p95 in seconds, and the
    ratio; the full table adds total tokens/s, goodput and mean/p99 latencies (results.json
    always has everything)."""
    title = (
        f"{report.topology}: {report.mode}, workload {report.workload}, "
        f"{report.settings['duration_s']:g} s (warm-up {report.settings['warmup_s']:g} s)"
    )
    online = report.mode == "online"
    table = (
        Table(
            title=title,
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
            caption="tok/s: decode; flow: share of max-flow; TTFT, TPOT: p50/p95 s",
        )
        if compact
        else Table(title=title, show_lines=False)
    )
    if compact:
        columns = ["method", "sched"] + (["rate/s"] if online else []) + ["tok/s", "req/s", "max-flow", "flow", "TTFT", "TPOT", "helix x"]
    else:
        columns = (
            ["method", "scheduler"]
            + (["rate/s"] if online else [])
            + [
                "decode tok/s",
                "total tok/s",
                "req/s",
                "goodput req/s",
                "max-flow",
                "of flow",
                "TTFT mean/p50/p95/p99 ms",
                "TPOT mean/p50/p95/p99 ms",
                "helix x",
            ]
        )
    for c in columns:
        table.add_column(c, justify="left" if c in ("method", "scheduler", "sched") else "right")
    for case, res in report.results:
        m = res.metrics
        ratio = report.helix_ratio(case, res)
        ratio_cell = "-" if ratio is None or math.isinf(ratio) else f"{ratio:.2f}x"
        head = [case.method, case.policy] + ([_num(case.rate_per_s, 2)] if online else [])
        if compact:
            row = head + [
                _num(m.decode_tokens_per_s),
                _num(m.requests_per_s, 2),
                _num(res.max_flow_tokens_per_s),
                f"{100 * res.flow_fraction:.0f}%",
                "/".join(_seconds(v) for v in (m.ttft.p50_ms, m.ttft.p95_ms)),
                "/".join(_num(v / 1e3, 2) for v in (m.tpot.p50_ms, m.tpot.p95_ms)),
                ratio_cell,
            ]
        else:
            row = head + [
                _num(m.decode_tokens_per_s),
                _num(m.total_tokens_per_s),
                _num(m.requests_per_s, 2),
                _num(m.goodput_requests_per_s, 2),
                _num(res.max_flow_tokens_per_s),
                f"{100 * res.flow_fraction:.0f}%",
                "/".join(_num(v, 0) for v in (m.ttft.mean_ms, m.ttft.p50_ms, m.ttft.p95_ms, m.ttft.p99_ms)),
                "/".join(_num(v, 0) for v in (m.tpot.mean_ms, m.tpot.p50_ms, m.tpot.p95_ms, m.tpot.p99_ms)),
                ratio_cell,
            ]
        table.add_row(*row)
    return table


def live_table(result: LiveResult) -> Table:
    """One run against a deployment: the same figures as a simulated row."""
    m, c = result.metrics, result.config
    rate = f", {c.rate_per_s:g} req/s" if c.mode == "online" else f", {c.concurrency} in flight"
    table = Table(
        title=f"{result.endpoint} ({result.deployment.get('model', '?')}): {c.mode}{rate}, {c.duration_s:g} s (warm-up {c.warmup_s:g} s)"
    )
    for name in (
        "decode tok/s",
        "total tok/s",
        "req/s",
        "goodput req/s",
        "TTFT mean/p50/p95/p99 ms",
        "TPOT mean/p50/p95/p99 ms",
        "sent",
        "done",
        "ended at EOS",
        "rejected",
        "failed",
    ):
        table.add_column(name, justify="right")
    table.add_row(
        _num(m.decode_tokens_per_s),
        _num(m.total_tokens_per_s),
        _num(m.requests_per_s, 2),
        _num(m.goodput_requests_per_s, 2),
        "/".join(_num(v, 0) for v in (m.ttft.mean_ms, m.ttft.p50_ms, m.ttft.p95_ms, m.ttft.p99_ms)),
        "/".join(_num(v, 0) for v in (m.tpot.mean_ms, m.tpot.p50_ms, m.tpot.p95_ms, m.tpot.p99_ms)),
        str(result.sent),
        str(result.completed),
        str(result.ended_early),
        str(result.rejected_overloaded),
        str(result.failed),
    )
    return table


def _jsonable(value: Any) -> Any:
    """JSON has no inf/nan: write them as null (the settings say which SLO was unset)."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_results(report: BenchReport | dict[str, Any], out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write results.json (every figure and the settings) under `out_dir`; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict() if isinstance(report, BenchReport) else dict(report)
    if extra:
        data.update(extra)
    path = out / "results.json"
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    return path
