"""Planner benchmark: every shipped topology x every method, and helix at several time limits.

Run as `python -m helix_jax.solver.bench_plan` (`make bench-plan`). Prints, per topology and
method, the throughput (true max-flow, decode tokens/s), the proven upper bound, the gap and the
solve time; then helix's gap at each time limit; then helix against the best baseline and
Petals; then the shop (issue 20): for each target max-flow of LLaMA-2-70B, the least cost
per hour of a mix from `topologies/shop-llama2-70b.json`, its proven lower bound and the
cheapest single-type cluster; then the latency SLO frontier of single-region-24 (`plan_slo` at
each `--slo-limits` round trip); then the scale rows (issue 21, solver/bench_scale.py): synthetic
clusters of 50, 200 and 1000 GPUs in 1, 4 and 10 regions, each planned in its own child process
(wall time, peak memory, throughput, bound, gap); `--scale-only` runs just those. Figures, not
assertions: speed depends on the machine (note its cores and load).

Sits at the end of the planner's data flow: topology -> cost model -> plan(...) -> table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from helix_jax.costmodel import CostModel
from helix_jax.solver.plan import METHODS, plan
from helix_jax.topology import load_topology

REPO_TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
DEFAULT_TOPOLOGIES = (
    "cpu-small",
    "single-region-24-llama2-70b",
    "single-region-24-llama-30b",
    "three-region-24-llama2-70b",
    "three-region-24-tables-llama2-70b",
    "geo-42-llama2-70b",
)


def _row(topology_name: str, method: str, placement, time_limit_s: float | None, partial: bool) -> dict:
    bound = placement.upper_bound_tokens_per_s
    objective = placement.objective_tokens_per_s
    return {
        "topology": topology_name,
        "method": method,
        "partial_inference": partial,
        "time_limit_s": time_limit_s,
        "tokens_per_s": objective,
        "upper_bound_tokens_per_s": bound,
        "gap": (bound - objective) / bound if bound else None,
        "solve_seconds": placement.solve_seconds,
        "status": placement.status,
        "nodes_used": len(placement.ranges),
        "mean_hops": placement.extra.get("mean_hops"),
    }


def run(topologies: list[str], time_limits: list[float], main_limit: float, no_partial: bool, console: Console) -> list[dict]:
    rows = []
    for name in topologies:
        path = Path(name) if name.endswith(".json") else REPO_TOPOLOGIES / f"{name}.json"
        topo = load_topology(path)
        cm = CostModel(topo)
        for method in METHODS:
            limit = main_limit if method == "helix" else None
            t0 = time.monotonic()
            placement = plan(topo, method=method, time_limit_s=limit or 60.0, cost_model=cm)
            rows.append(_row(topo.name, method, placement, limit, True))
            console.log(f"{topo.name:28s} {method:12s} {placement.objective_tokens_per_s:9.1f} tok/s ({time.monotonic() - t0:.1f} s)")
        for limit in time_limits:
            if limit == main_limit:
                continue
            placement = plan(topo, method="helix", time_limit_s=limit, cost_model=cm)
            rows.append(_row(topo.name, "helix", placement, limit, True))
            console.log(f"{topo.name:28s} helix@{limit:g}s   {placement.objective_tokens_per_s:9.1f} tok/s")
        if no_partial:
            placement = plan(topo, method="helix", time_limit_s=main_limit, partial_inference=False, cost_model=cm)
            rows.append(_row(topo.name, "helix-no-partial", placement, main_limit, False))
    return rows


def print_tables(rows: list[dict], console: Console) -> None:
    table = Table(title="placements (decode tokens/s, true max-flow)")
    for col in ("topology", "method", "limit s", "tokens/s", "upper bound", "gap", "solve s", "status", "nodes", "hops"):
        table.add_column(col, justify="left" if col in ("topology", "method", "status") else "right")
    for r in rows:
        table.add_row(
            r["topology"],
            r["method"],
            "-" if r["time_limit_s"] is None else f"{r['time_limit_s']:g}",
            f"{r['tokens_per_s']:.1f}",
            "-" if r["upper_bound_tokens_per_s"] is None else f"{r['upper_bound_tokens_per_s']:.1f}",
            "-" if r["gap"] is None else f"{100 * r['gap']:.2f}%",
            f"{r['solve_seconds']:.1f}",
            r["status"],
            str(r["nodes_used"]),
            "-" if r["mean_hops"] is None else f"{r['mean_hops']:.1f}",
        )
    console.print(table)
    summary = Table(title="helix (longest limit) against the baselines")
    for col in ("topology", "helix", "best baseline", "x best", "petals", "x petals", "swarm", "x swarm"):
        summary.add_column(col, justify="left" if col == "topology" else "right")
    for topo in dict.fromkeys(r["topology"] for r in rows):
        mine = [r for r in rows if r["topology"] == topo]
        helix = max((r for r in mine if r["method"] == "helix"), key=lambda r: r["time_limit_s"])["tokens_per_s"]
        base = {r["method"]: r["tokens_per_s"] for r in mine if r["method"] not in ("helix", "helix-no-partial")}
        best = max(base.values())
        summary.add_row(
            topo,
            f"{helix:.1f}",
            f"{best:.1f} ({max(base, key=base.get)})",
            f"{helix / best:.2f}",
            f"{base['petals']:.1f}",
            f"{helix / base['petals']:.2f}",
            f"{base['swarm']:.1f}",
            f"{helix / base['swarm']:.2f}",
        )
    console.print(summary)


def run_shop(targets: list[float], time_limit_s: float, console: Console) -> list[dict]:
    """Shop rows: least cost per hour for each target (solver/shop_report.py)."""
    from helix_jax.costmodel import WorkloadShape
    from helix_jax.solver.shop_report import frontier

    pool = load_topology(REPO_TOPOLOGIES / "shop-llama2-70b.json")
    rows = []
    for target in targets:
        t0 = time.monotonic()
        ((best, single),) = frontier(pool, [target], WorkloadShape(), time_limit_s=time_limit_s)
        rows.append(
            {
                "target_tokens_per_s": target,
                **best.to_dict(),
                "seconds": time.monotonic() - t0,
                "cheapest_single_type": single.to_dict() if single else None,
            }
        )
        console.log(
            f"shop {target:g} tok/s: {best.mix} at {best.cost_per_hour} per hour "
            f"(bound {best.cost_lower_bound_per_hour:.2f}, {time.monotonic() - t0:.1f} s)"
        )
    table = Table(title="shop: least cost per hour of LLaMA-2-70B max-flow (shop-llama2-70b pool)")
    for col in ("target tok/s", "mix", "cost/h", "lower bound", "gap", "tok/s", "tokens per $", "single type", "single cost/h", "s"):
        table.add_column(col, justify="left" if col in ("mix", "single type") else "right")
    for r in rows:
        single, cost, low = r["cheapest_single_type"], r["cost_per_hour"], r["cost_lower_bound_per_hour"]
        table.add_row(
            f"{r['target_tokens_per_s']:g}",
            str(r["mix"]),
            "-" if cost is None else f"{cost:.2f}",
            "-" if low is None else f"{low:.2f}",
            "-" if cost is None or low is None else f"{100 * (cost - low) / cost:.1f}%",
            "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}",
            "-" if r["tokens_per_dollar"] is None else f"{r['tokens_per_dollar']:,.0f}",
            str(single["mix"]) if single else "-",
            f"{single['cost_per_hour']:.2f}" if single else "-",
            f"{r['seconds']:.0f}",
        )
    console.print(table)
    return rows


def run_slo(limits_ms: list[float], time_limit_s: float, console: Console) -> list[dict]:
    """SLO frontier rows (issue 20, part 2): single-region-24 planned at each round-trip limit."""
    from helix_jax.solver.slo import plan_slo
    from helix_jax.solver.slo_model import Limits

    topo = load_topology(REPO_TOPOLOGIES / "single-region-24-llama2-70b.json")
    rows = []
    for ms in limits_ms:
        p = plan_slo(topo, Limits(tpot_s=ms / 1e3), time_limit_s=time_limit_s, cost_model=CostModel(topo))
        rows.append(
            {
                **_row(topo.name, f"slo-{ms:g}ms", p, time_limit_s, True),
                "slo_tpot_ms": ms,
                "max_round_trip_ms": p.extra["slo"]["max_round_trip_ms"],
                "source": p.extra["source"],
            }
        )
        console.log(
            f"slo {ms:g} ms: {p.objective_tokens_per_s:.1f} tok/s (bound {p.upper_bound_tokens_per_s:.1f}, "
            f"longest round trip {p.extra['slo']['max_round_trip_ms']:.0f} ms, {p.solve_seconds:.0f} s)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", nargs="*", default=list(DEFAULT_TOPOLOGIES), help="names under topologies/ or paths to JSON files")
    parser.add_argument("--time-limits", default="5,15,60", help="helix time limits in seconds, comma-separated")
    parser.add_argument("--no-partial", action="store_true", help="also run helix without partial inference")
    parser.add_argument("--shop-targets", default="100,250,500,750,1000", help="shop targets in tokens/s, comma-separated, or none")
    parser.add_argument("--shop-time-limit", type=float, default=40.0, help="seconds per shop target")
    parser.add_argument(
        "--slo-limits", default="1300,1500,2000", help="SLO frontier of single-region-24: round-trip limits in ms, comma-separated, or none"
    )
    parser.add_argument("--scale-gpus", default="50,200,1000", help="scale rows: GPUs, comma-separated, or none")
    parser.add_argument("--scale-regions", default="1,4,10", help="scale rows: regions, comma-separated")
    parser.add_argument("--scale-time-limit", type=float, default=60.0, help="seconds per scale row")
    parser.add_argument("--scale-only", action="store_true", help="run only the scale rows")
    parser.add_argument("--json-out", type=Path, default=None, help="write all rows to this JSON file")
    args = parser.parse_args()
    if args.scale_only:
        args.topologies, args.shop_targets, args.slo_limits = [], "none", "none"
    logging.basicConfig(level=logging.WARNING)
    limits = sorted(float(x) for x in args.time_limits.split(","))
    console = Console()
    console.log(f"machine: {os.cpu_count()} CPU cores visible")
    rows = run(args.topologies, limits, limits[-1], args.no_partial, console) if args.topologies else []
    if rows:
        print_tables(rows, console)
    if args.shop_targets != "none":
        rows += run_shop([float(x) for x in args.shop_targets.split(",")], args.shop_time_limit, console)
    if args.slo_limits != "none":
        rows += run_slo([float(x) for x in args.slo_limits.split(",")], 60.0, console)
    if args.scale_gpus != "none":
        from helix_jax.solver.bench_scale import run_scale

        rows += run_scale(
            [int(x) for x in args.scale_gpus.split(",")], [int(x) for x in args.scale_regions.split(",")], args.scale_time_limit, console
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
