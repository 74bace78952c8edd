"""Planner commands: `validate`, `plan`, `explain`.

Each parses its options, calls one library function (topology loading, `solver.plan.plan`,
`solver.plan.explain`, `validate_placement`) and prints a rich table, or with `--json` exactly
one JSON object on stdout. The solver (cvxpy, HiGHS) is imported inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import PlacementError, TopologyError
from helix_jax.topology import Topology, load_topology


def _summary(topo: Topology) -> str:
    kinds: dict[str, int] = {}
    for n in topo.nodes:
        kinds[n.gpu] = kinds.get(n.gpu, 0) + 1
    return (
        f"[bold]{topo.name}[/]: {len(topo.nodes)} nodes "
        f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
        f"regions {', '.join(topo.regions)}, model {topo.model.name} ({topo.model.num_layers} layers)"
    )


def validate(
    topology: Path = typer.Argument(..., help="Topology JSON file."),
    placement: Path | None = typer.Option(None, "--placement", help="Also check this placement JSON."),
) -> None:
    """Check a topology file (and optionally a placement for it) and print a summary."""
    topo = load_topology(topology)
    console = Console()
    console.print(_summary(topo))
    if placement is not None:
        from helix_jax.placement import Placement
        from helix_jax.solver.validate import validate_placement

        plan_ = Placement.load(placement)
        validate_placement(plan_, topo)
        console.print(f"placement valid: {len(plan_.ranges)} nodes, {plan_.objective_tokens_per_s:.1f} tokens/s")
    console.print("valid")


def _gap(placement: Any) -> float | None:
    """Relative gap to the placement's upper bound; None without a bound (or with a zero one)."""
    bound = placement.upper_bound_tokens_per_s
    return (bound - placement.objective_tokens_per_s) / bound if bound else None


def _placement_json(placement: Any) -> dict[str, Any]:
    out = placement.to_dict()
    out["gap"] = _gap(placement)
    return out


def _print_placement(console: Console, topo: Topology, placement: Any) -> None:
    cost_model = CostModel(topo, WorkloadShape.recorded_in(placement))
    table = Table(title=f"{placement.method} placement of {topo.model.name} on {topo.name}")
    for col in ("node", "type", "region", "layers", "k", "flow tok/s", "capacity tok/s", "util"):
        table.add_column(col, justify="right" if col in ("k", "flow tok/s", "capacity tok/s", "util") else "left")
    order = sorted(placement.ranges, key=lambda n: (placement.ranges[n], n))
    for name in order:
        start, end = placement.ranges[name]
        node = topo.node(name)
        flow = placement.node_flow(name)
        capacity = cost_model.node_capacity_tokens_per_s(name, end - start)
        table.add_row(
            name,
            node.gpu,
            node.region or "-",
            f"[{start}, {end})",
            str(end - start),
            f"{flow:.1f}",
            f"{capacity:.1f}",
            f"{100 * flow / capacity:.0f}%",
        )
    idle = [n.name for n in topo.nodes if n.name not in placement.ranges]
    console.print(table)
    if idle:
        console.print(f"unused nodes: {', '.join(idle)}")
    bound = placement.upper_bound_tokens_per_s
    line = f"throughput [bold]{placement.objective_tokens_per_s:.1f}[/] tokens/s"
    if bound is not None:
        line += f", upper bound {bound:.1f} tokens/s, gap {100 * (_gap(placement) or 0.0):.2f}%"
    line += f", status {placement.status}, solved in {placement.solve_seconds:.1f} s"
    if "mean_hops" in placement.extra:
        line += f", {placement.extra['mean_hops']:.1f} nodes per route on average"
    console.print(line)


def plan(
    topology: Path = typer.Argument(..., help="Topology JSON file."),
    method: str = typer.Option("helix", "--method", help="helix | swarm | petals | sp | homogeneous"),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Solver time limit in seconds."),
    gap: float = typer.Option(1e-3, "--gap", help="Relative optimality gap to stop at."),
    no_partial: bool = typer.Option(False, "--no-partial", help="Hand-offs only where ranges meet exactly."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same placement)."),
    regions: str = typer.Option("auto", "--regions", help="auto | windows (one block of layers per region) | free"),
    trace: Path | None = typer.Option(None, "--trace", help="Plan for this CSV's lengths (input_tokens,output_tokens)."),
    prompt_tokens: int | None = typer.Option(None, "--prompt-tokens", help="Plan for fixed lengths (with --output-tokens)."),
    output_tokens: int | None = typer.Option(None, "--output-tokens", help="Plan for fixed lengths (with --prompt-tokens)."),
    slo_tpot_ms: float | None = typer.Option(
        None, "--slo-tpot-ms", help="Every flow path's round trip (step times at planned load + link latencies) within this."
    ),
    max_hops: int | None = typer.Option(None, "--max-hops", help="Every flow path within this many hops."),
    out: Path | None = typer.Option(None, "--out", help="Write the placement JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    shop: bool = typer.Option(False, "--shop", help="TOPOLOGY is a pool (count = available, price_per_hour): choose which GPUs to rent."),
    target_tokens_per_s: float | None = typer.Option(
        None, "--target-tokens-per-s", help="--shop: least cost per hour reaching this max-flow."
    ),
    budget_per_hour: float | None = typer.Option(None, "--budget-per-hour", help="--shop: most max-flow within this cost per hour."),
    frontier: str = typer.Option("auto", "--frontier", help="--shop: Pareto frontier targets: auto | none | comma-separated tokens/s."),
    frontier_points: int = typer.Option(5, "--frontier-points", help="--shop: targets of --frontier auto."),
    frontier_png: Path | None = typer.Option(
        None, "--frontier-png", help="--shop: write the frontier plot here (default POOLNAME-frontier.png without --json)."
    ),
    out_topology: Path | None = typer.Option(None, "--out-topology", help="--shop: write a topology file of the chosen mix here."),
) -> None:
    """Choose a layer range per node to maximise the cluster's max-flow of tokens (or, with
    --shop, which GPUs of a pool to rent)."""
    from helix_jax.errors import ConfigError
    from helix_jax.solver.plan import plan as run_plan
    from helix_jax.workload import length_sampler

    if regions not in ("auto", "windows", "free"):
        raise ConfigError(f"--regions must be auto, windows or free, got {regions!r}")
    if not shop and (target_tokens_per_s is not None or budget_per_hour is not None or out_topology is not None):
        raise ConfigError("--target-tokens-per-s, --budget-per-hour and --out-topology need --shop")
    topo = load_topology(topology)
    workload = length_sampler(trace, prompt_tokens, output_tokens)
    if shop:
        from helix_jax.cli.shop_cmds import run_shop

        if method != "helix":
            raise ConfigError(f"--shop plans with the helix method, got --method {method}")
        run_shop(
            topology,
            topo,
            target=target_tokens_per_s,
            budget=budget_per_hour,
            frontier_text=frontier,
            frontier_points=frontier_points,
            frontier_png=frontier_png,
            time_limit_s=time_limit,
            seed=seed,
            partial=not no_partial,
            workload=workload.shape,
            out=out,
            out_topology=out_topology,
            as_json=as_json,
        )
        return
    if slo_tpot_ms is not None or max_hops is not None:
        from helix_jax.solver.slo import plan_slo
        from helix_jax.solver.slo_model import Limits

        if method != "helix":
            raise ConfigError(f"--slo-tpot-ms / --max-hops plan with the helix method, got --method {method}")
        limits = Limits(None if slo_tpot_ms is None else slo_tpot_ms / 1e3, max_hops)
        placement = plan_slo(topo, limits, time_limit_s=time_limit, seed=seed, cost_model=CostModel(topo, workload.shape))
    else:
        placement = run_plan(
            topo,
            method=method,
            time_limit_s=time_limit,
            rel_gap=gap,
            partial_inference=not no_partial,
            seed=seed,
            cost_model=CostModel(topo, workload.shape),
            region_windows=None if regions == "auto" else regions == "windows",
        )
    if out is not None:
        placement.save(out)
    if as_json:
        sys.stdout.write(json.dumps(_placement_json(placement)) + "\n")
        return
    console = Console()
    _print_placement(console, topo, placement)
    if "slo" in placement.extra:
        slo = placement.extra["slo"]
        console.print(
            f"SLO {slo['tpot_ms'] or '-'} ms / {slo['max_hops'] or '-'} hops: "
            f"{len(placement.extra['routes'])} routes, longest round trip {slo['max_round_trip_ms']:.0f} ms, "
            f"most hops {slo['max_route_hops']}; "
            f"unconstrained max-flow {slo['unconstrained_tokens_per_s']:.1f} tokens/s"
        )
    console.print(f"tokens/s of the {workload.name} workload: {workload.shape.describe()}")
    if out is not None:
        console.print(f"placement written to {out}")


def _looks_like_placement(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: load_topology names it
        return False
    return isinstance(raw, dict) and isinstance(raw.get("nodes"), dict)


def explain(
    source: Path = typer.Argument(..., help="A placement JSON (with --topology) or a topology JSON."),
    topology: Path | None = typer.Option(None, "--topology", help="Topology of the placement."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Planning time limit for a topology."),
    boost: float = typer.Option(0.1, "--boost", help="Capacity added to each cut element (0.1 = +10%)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Show what limits a placement's throughput: the min cut and what more capacity would gain."""
    from helix_jax.placement import Placement
    from helix_jax.solver.plan import explain as run_explain
    from helix_jax.solver.plan import plan as run_plan
    from helix_jax.solver.validate import validate_placement

    if not source.is_file():
        raise TopologyError(f"file {str(source)!r} does not exist")
    if _looks_like_placement(source):
        if topology is None:
            raise PlacementError(f"{source.name} is a placement; pass its topology with --topology")
        topo = load_topology(topology)
        placement = Placement.load(source)
        validate_placement(placement, topo)
    else:
        topo = load_topology(source)
        placement = run_plan(topo, time_limit_s=time_limit)
    result = run_explain(topo, placement, CostModel(topo, WorkloadShape.recorded_in(placement)), boost=boost)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "throughput_tokens_per_s": result.throughput_tokens_per_s,
                    "upper_bound_tokens_per_s": result.upper_bound_tokens_per_s,
                    "boost": result.boost,
                    "cut": [vars(c) for c in result.cut],
                    "gain_all_cut_tokens_per_s": result.gain_all_cut_tokens_per_s,
                    "bottleneck_layers": list(result.bottleneck_layers),
                }
            )
            + "\n"
        )
        return
    console = Console()
    table = Table(title=f"minimum cut of {placement.method} placement on {topo.name} ({result.throughput_tokens_per_s:.1f} tokens/s)")
    for col in ("kind", "element", "capacity tok/s", "flow tok/s", f"gain at +{100 * boost:.0f}%"):
        table.add_column(col)
    for c in result.cut:
        table.add_row(c.kind, c.name, f"{c.capacity_tokens_per_s:.1f}", f"{c.flow_tokens_per_s:.1f}", f"{c.gain_tokens_per_s:+.1f}")
    console.print(table)
    console.print(
        f"raising the whole cut by {100 * boost:.0f}% gains {result.gain_all_cut_tokens_per_s:+.1f} tokens/s "
        "(a single element gains nothing when other cuts are as tight)"
    )
    layers = result.bottleneck_layers
    console.print(
        f"least-covered layers ({min(result.layer_capacity_tokens_per_s):.1f} tokens/s of capacity): "
        f"{', '.join(map(str, layers[:20]))}{' ...' if len(layers) > 20 else ''}"
    )
    if result.upper_bound_tokens_per_s:
        console.print(f"upper bound of any placement: {result.upper_bound_tokens_per_s:.1f} tokens/s")


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(plan)
    app.command()(explain)
