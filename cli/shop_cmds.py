"""`helix-jax plan POOL --shop`: which GPUs to rent, printed as tables or one JSON object.

Owns the shop's command-line surface: it checks the options, calls solver/shop.py (`shop`) and
solver/shop_report.py (single-type comparison, frontier, PNG) and prints. Sits at the end of
the data flow: pool file -> topology -> shop -> **this** (stdout, --out files, PNG).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from helix_jax.costmodel import WorkloadShape
from helix_jax.errors import ConfigError, TopologyError
from helix_jax.jsonfile import read_json_file
from helix_jax.topology import Topology


def parse_targets(text: str) -> list[float] | None:
    """'auto' -> None; 'none' -> []; '100,200' -> [100.0, 200.0]."""
    if text.strip().lower() == "auto":
        return None
    if text.strip().lower() == "none":
        return []
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--frontier takes auto, none or comma-separated tokens/s, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise ConfigError(f"--frontier targets must be positive numbers, got {text!r}")
    return sorted(set(values))


def _money(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def _mix(mix: dict[str, int] | None) -> str:
    return "-" if not mix else ", ".join(f"{v} x {k}" for k, v in mix.items())


def run_shop(
    pool_path: Path,
    topo: Topology,
    *,
    target: float | None,
    budget: float | None,
    frontier_text: str,
    frontier_points: int,
    frontier_png: Path | None,
    time_limit_s: float,
    seed: int,
    partial: bool,
    workload: WorkloadShape,
    out: Path | None,
    out_topology: Path | None,
    as_json: bool,
) -> None:
    from helix_jax.solver import shop_report as report
    from helix_jax.solver.shop import most_flow_mix, shop

    if frontier_points < 1:
        raise ConfigError(f"--frontier-points must be at least 1, got {frontier_points}")
    targets = parse_targets(frontier_text)
    rows: list = []
    start = None
    if target is not None:  # the frontier first: its mix reaching the target starts the shop
        if targets is None:
            _, largest, _ = most_flow_mix(topo, math.inf, workload, partial, 0.2 * time_limit_s, seed)
            targets = report.default_targets(largest, frontier_points)
        targets = sorted(set(targets) | {target})
        rows = report.frontier(topo, targets, workload, partial, time_limit_s, seed)
        start = next((p.ranges for p, _ in rows if p.target_tokens_per_s == target), None)
    result = shop(
        topo,
        target_tokens_per_s=target,
        budget_per_hour=budget,
        workload=workload,
        partial_inference=partial,
        time_limit_s=time_limit_s,
        seed=seed,
        start=start,
    )
    reach = result.placement.objective_tokens_per_s
    answer = report.MixPoint(reach, result.mix, result.cost_per_hour, 0.0, reach, dict(result.placement.ranges))
    if target is None and targets != []:
        if targets is None:
            _, largest, _ = most_flow_mix(topo, math.inf, workload, partial, 0.2 * time_limit_s, seed)
            targets = sorted(set(report.default_targets(max(largest, reach), frontier_points)) | {round(reach, 1)})
        rows = report.frontier(topo, targets, workload, partial, time_limit_s, seed, known=[answer])
    else:  # the shop's answer, searched from the frontier's, may beat the points it reaches
        rows = [(_cheaper(p, answer), s) for p, s in rows]
    compare_at = target if target is not None else reach  # what a single type must reach
    options = report.single_type_options(topo, compare_at, workload, partial, 0.2 * time_limit_s, seed)
    single = report.cheapest_single_type(options)
    if frontier_png is None and rows and not as_json:
        frontier_png = Path(f"{topo.name}-frontier.png")
    if frontier_png is not None and rows:
        report.plot_frontier(rows, frontier_png, f"{topo.model.name} on {topo.name}: cost of max-flow")
    if out is not None:
        result.placement.save(out)
    if out_topology is not None:
        raw = read_json_file(pool_path, "topology", TopologyError)
        rented = sorted(result.placement.ranges)
        out_topology.write_text(json.dumps(report.mix_topology_dict(raw, topo, rented), indent=2) + "\n")
    if as_json:
        sys.stdout.write(json.dumps(_as_dict(result, single, options, rows)) + "\n")
        return
    _print(Console(), topo, result, single, rows, frontier_png, out, out_topology)


def _cheaper(point: Any, mix: Any) -> Any:
    """`point` of the frontier, or `mix` in its place when `mix` reaches its target for less."""
    if mix.tokens_per_s < point.target_tokens_per_s * (1 - 1e-9):
        return point
    if point.cost_per_hour is not None and point.cost_per_hour <= mix.cost_per_hour:
        return point
    return dataclasses.replace(point, mix=mix.mix, cost_per_hour=mix.cost_per_hour, tokens_per_s=mix.tokens_per_s, ranges=mix.ranges)


def _as_dict(result: Any, single: Any, options: dict, rows: list) -> dict[str, Any]:
    placement = result.placement
    low = result.cost_lower_bound_per_hour
    return {
        "mode": result.mode,
        "target_tokens_per_s": result.target_tokens_per_s,
        "budget_per_hour": result.budget_per_hour,
        "mix": result.mix,
        "cost_per_hour": result.cost_per_hour,
        "cost_lower_bound_per_hour": low if low is not None and math.isfinite(low) else None,
        "objective_tokens_per_s": placement.objective_tokens_per_s,
        "upper_bound_tokens_per_s": result.upper_bound_tokens_per_s,
        "tokens_per_dollar": result.tokens_per_dollar,
        "status": placement.status,
        "nodes": placement.to_dict()["nodes"],
        "cheapest_single_type": single.to_dict() if single else None,
        "single_types": {k: v.to_dict() for k, v in options.items()},
        "frontier": [{**p.to_dict(), "cheapest_single_type": s.to_dict() if s else None} for p, s in rows],
        "solve_seconds": result.seconds,
    }


def _print(
    console: Console, topo: Topology, result: Any, single: Any, rows: list, png: Path | None, out: Path | None, out_topology: Path | None
) -> None:
    placement = result.placement
    table = Table(title=f"mix rented from {topo.name} ({topo.model.name})")
    for col in ("node", "type", "price/h", "layers", "flow tok/s"):
        table.add_column(col, justify="left" if col in ("node", "type") else "right")
    for name in sorted(placement.ranges, key=lambda n: (placement.ranges[n], n)):
        start, end = placement.ranges[name]
        node = topo.node(name)
        table.add_row(name, node.gpu, _money(node.price_per_hour), f"[{start}, {end})", f"{placement.node_flow(name):.1f}")
    console.print(table)
    goal = f"target {result.target_tokens_per_s:g} tokens/s" if result.mode == "target" else f"budget {result.budget_per_hour:g} per hour"
    console.print(
        f"{goal}: [bold]{_mix(result.mix)}[/], cost [bold]{result.cost_per_hour:.2f}[/] per hour"
        + (
            f" (no mix reaching the target costs less than {result.cost_lower_bound_per_hour:.2f})"
            if result.cost_lower_bound_per_hour is not None
            else ""
        )
    )
    console.print(
        f"max-flow {placement.objective_tokens_per_s:.1f} tokens/s (upper bound "
        f"{result.upper_bound_tokens_per_s:.1f}), {result.tokens_per_dollar:,.0f} tokens per dollar, "
        f"solved in {result.seconds:.1f} s"
    )
    if single is not None:
        console.print(
            f"cheapest single-type cluster reaching {single.target_tokens_per_s:.1f} tokens/s: "
            f"{_mix(single.mix)}, {single.cost_per_hour:.2f} per hour "
            f"({single.cost_per_hour / result.cost_per_hour:.2f}x the mix)"
            if result.cost_per_hour
            else f"cheapest single-type cluster: {_mix(single.mix)}"
        )
    else:
        console.print("no single GPU type of the pool reaches that max-flow alone")
    if rows:
        front = Table(title="Pareto frontier: least cost per hour for each target max-flow")
        for col in ("target tok/s", "mix", "cost/h", "lower bound", "tok/s", "tokens per $", "single type", "cost/h "):
            front.add_column(col, justify="left" if col in ("mix", "single type") else "right")
        for p, s in rows:
            front.add_row(
                f"{p.target_tokens_per_s:g}",
                _mix(p.mix),
                _money(p.cost_per_hour),
                _money(p.cost_lower_bound_per_hour) if math.isfinite(p.cost_lower_bound_per_hour) else "out of reach",
                "-" if p.tokens_per_s is None else f"{p.tokens_per_s:.1f}",
                "-" if p.tokens_per_dollar is None else f"{p.tokens_per_dollar:,.0f}",
                _mix(s.mix) if s else "-",
                _money(s.cost_per_hour) if s else "-",
            )
        console.print(front)
    for path, what in ((png, "frontier plot"), (out, "placement"), (out_topology, "topology of the mix")):
        if path is not None:
            console.print(f"{what} written to {path}")
