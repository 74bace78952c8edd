"""`helix-jax bench TOPOLOGY --simulate --slo-sweep 1200,1500,2000`: the latency SLO frontier.

Owns: planning one SLO placement per round-trip limit (solver/slo.py), simulating each with the
bench's workload and settings (plus the unconstrained Helix plan and separate pipelines for
reference), the frontier table (max-flow, its bound, simulated decode tok/s, TPOT p50 / p95)
and its PNG (matplotlib Agg).

Sits at the end of the bench's data flow: topology -> plan_slo per limit -> simulator -> table
and plot.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from helix_jax.errors import ConfigError, InfeasibleError


def parse_limits(text: str) -> list[float]:
    """Round-trip limits in ms from "1200,1500,2000" (positive numbers, at least one)."""
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--slo-sweep takes comma-separated milliseconds, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise ConfigError(f"--slo-sweep needs positive milliseconds, got {text!r}")
    return values


def run_sweep(
    console: Console, topo, cost, lengths, base, limits_ms: list[float], time_limit_s: float, seed: int, out: Path | None
) -> list[dict]:
    """Plan, simulate and report every limit (an infeasible one is reported and skipped)."""
    from helix_jax.sim import simulate
    from helix_jax.solver.plan import plan
    from helix_jax.solver.slo import plan_slo
    from helix_jax.solver.slo_model import Limits

    rows = []
    cases = [(f"{ms:g} ms", ms) for ms in limits_ms] + [("helix (no SLO)", None), ("sp", "sp")]
    for label, ms in cases:
        with console.status(f"planning {label} ..."):
            try:
                if ms == "sp":
                    p = plan(topo, method="sp", cost_model=cost)
                elif ms is None:
                    p = plan(topo, time_limit_s=time_limit_s, seed=seed, cost_model=cost)
                else:
                    p = plan_slo(topo, Limits(tpot_s=ms / 1e3), time_limit_s=time_limit_s, seed=seed, cost_model=cost)
            except InfeasibleError as exc:
                console.print(f"  {label}: {exc}")
                continue
        with console.status(f"simulating {label} ..."):
            m = simulate(p, cost, lengths, base).metrics
        rows.append(
            {
                "slo": label,
                "slo_ms": ms if isinstance(ms, float) else None,
                "max_flow_tokens_per_s": p.objective_tokens_per_s,
                "upper_bound_tokens_per_s": p.upper_bound_tokens_per_s,
                "decode_tokens_per_s": m.decode_tokens_per_s,
                "tpot_p50_ms": m.tpot.p50_ms,
                "tpot_p95_ms": m.tpot.p95_ms,
                "longest_round_trip_ms": p.extra.get("slo", {}).get("max_round_trip_ms"),
                "plan_seconds": p.solve_seconds,
            }
        )
    table = Table(title=f"{topo.name}: latency SLO frontier ({base.mode}, {base.duration_s:g} s, warm-up {base.warmup_s:g} s)")
    for col in ("SLO", "max-flow tok/s", "bound", "sim decode tok/s", "TPOT p50 ms", "TPOT p95 ms", "longest planned RT ms"):
        table.add_column(col, justify="left" if col == "SLO" else "right")
    for r in rows:
        bound, rt = r["upper_bound_tokens_per_s"], r["longest_round_trip_ms"]
        table.add_row(
            r["slo"],
            f"{r['max_flow_tokens_per_s']:.1f}",
            "-" if bound is None else f"{bound:.1f}",
            f"{r['decode_tokens_per_s']:.1f}",
            f"{r['tpot_p50_ms']:.0f}",
            f"{r['tpot_p95_ms']:.0f}",
            "-" if rt is None else f"{rt:.0f}",
        )
    console.print(table)
    if out is not None:
        import json

        out.mkdir(parents=True, exist_ok=True)
        (out / "slo_frontier.json").write_text(json.dumps(rows, indent=2) + "\n")
        console.print(f"wrote {out / 'slo_frontier.json'} and {plot(rows, topo.name, out / 'slo_frontier.png').name}")
    return rows


def plot(rows: list[dict], name: str, path: Path) -> Path:
    """Simulated decode tok/s (and max-flow) against TPOT p95, one point per SLO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    slo = [r for r in rows if r["slo_ms"] is not None]
    ax.plot([r["tpot_p95_ms"] for r in slo], [r["decode_tokens_per_s"] for r in slo], "o-", label="simulated")
    ax.plot([r["tpot_p95_ms"] for r in slo], [r["max_flow_tokens_per_s"] for r in slo], "s--", label="max-flow")
    for r in rows:
        ax.annotate(r["slo"], (r["tpot_p95_ms"], r["decode_tokens_per_s"]), fontsize=8)
        if r["slo_ms"] is None:
            ax.plot([r["tpot_p95_ms"]], [r["decode_tokens_per_s"]], "x", color="black")
    ax.set_xlabel("simulated TPOT p95 (ms)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"{name}: latency SLO frontier")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
