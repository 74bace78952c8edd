"""Bench plots (matplotlib, Agg backend: no display needed), written next to results.json.

* `throughput.png`: decode tokens/s per (method, scheduler), with each placement's max-flow;
* `latency_cdf.png`: CDFs of TTFT and TPOT per case (from the bounded reservoirs);
* `rate_sweep.png` (online sweeps only): decode throughput and p95 TTFT / TPOT vs offered rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from helix_jax.bench.metrics import RunMetrics
from helix_jax.bench.runner import BenchReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: BenchReport, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    runs = [(case.label, res.metrics) for case, res in report.results]
    paths = [
        _throughput(plt, report, out / "throughput.png"),
        latency_cdf(runs, f"{report.topology}: latency CDFs ({report.mode})", out / "latency_cdf.png"),
    ]
    rates = sorted({c.rate_per_s for c, _ in report.results if c.rate_per_s is not None})
    if len(rates) > 1:
        paths.append(_rate_sweep(plt, report, out / "rate_sweep.png"))
    return paths


def _throughput(plt, report: BenchReport, path: Path) -> Path:
    rates = sorted({c.rate_per_s for c, _ in report.results}, key=lambda r: (r is None, r or 0))
    top_rate = rates[-1]
    cases = [(c, r) for c, r in report.results if c.rate_per_s == top_rate]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(cases) + 2), 4))
    labels = [f"{c.method}\n{c.policy}" for c, _ in cases]
    xs = range(len(cases))
    ax.bar(xs, [r.metrics.decode_tokens_per_s for _, r in cases], color="tab:blue", label="simulated")
    ax.scatter(xs, [r.max_flow_tokens_per_s for _, r in cases], color="tab:red", marker="_", s=400, label="placement max-flow", zorder=3)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("decode tokens/s")
    suffix = "" if top_rate is None else f" at {top_rate:g} req/s"
    ax.set_title(f"{report.topology}: {report.mode}{suffix}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_cdf(runs: Sequence[tuple[str, RunMetrics]], title: str, path: Path) -> Path:
    """TTFT and TPOT CDFs of labelled runs (simulated or live) in one PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, metrics in runs:
        for ax, samples in ((axes[0], metrics.ttft_samples_s), (axes[1], metrics.tpot_samples_s)):
            values = sorted(1000 * s for s in samples)
            if values:
                n = len(values)
                ax.plot(values, [(i + 1) / n for i in range(n)], label=label, lw=1)
    for ax, name in ((axes[0], "TTFT"), (axes[1], "TPOT")):
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _rate_sweep(plt, report: BenchReport, path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    series: dict[str, list] = {}
    for case, res in report.results:
        series.setdefault(f"{case.method}/{case.policy}", []).append((case.rate_per_s, res))
    for label, points in series.items():
        points.sort(key=lambda p: p[0])
        rates = [p[0] for p in points]
        axes[0].plot(rates, [p[1].metrics.decode_tokens_per_s for p in points], marker="o", label=label)
        axes[1].plot(rates, [p[1].metrics.ttft.p95_ms for p in points], marker="o", label=label)
        axes[2].plot(rates, [p[1].metrics.tpot.p95_ms for p in points], marker="o", label=label)
    for ax, ylabel in zip(axes, ("decode tokens/s", "p95 TTFT (ms)", "p95 TPOT (ms)")):
        ax.set_xlabel("offered rate (requests/s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{report.topology}: online rate sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
