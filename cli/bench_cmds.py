"""`helix-jax bench`: simulated comparison of placements and schedulers, or a live run.

* `helix-jax bench TOPOLOGY --simulate ...` plans every method (the CLI may import the solver;
  the library may not), simulates each (method x scheduler x rate) case with the same workload,
  prints one table plus Helix's ratio to each baseline, and with `--out DIR` writes
  results.json and PNG plots.
* `helix-jax bench --endpoint tcp://HOST:PORT ...` runs the same workload against a deployment
  through `helix_jax.client.AsyncClient` and reports the same metrics; `--endpoint
  http://HOST:PORT` measures any OpenAI-compatible server the same way (streamed
  /v1/completions; the key from HELIX_API_KEY or OPENAI_API_KEY).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from helix_jax.errors import ConfigError

if TYPE_CHECKING:
    from helix_jax.placement import Placement

DEFAULT_METHODS = "helix,swarm,petals,sp"


def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"--{what} needs at least one name")
    return items


def plan_methods(
    topology, cost_model, methods: list[str], time_limit_s: float, seed: int, helix_placement: Path | Placement | None, console: Console
) -> dict:
    """Placements for every method: the solver's, or for helix a saved file (its flows
    recomputed for this topology and the bench's workload, like deploy's) or a Placement
    already planned for this cost model (the demo's)."""
    from helix_jax.cli.serve_cmds import placement_for
    from helix_jax.placement import Placement

    placements = {}
    for method in methods:
        if method == "helix" and isinstance(helix_placement, Placement):
            placements[method] = helix_placement
            console.print(f"  helix: max-flow {helix_placement.objective_tokens_per_s:,.1f} tok/s (the placement above)")
            continue
        if method == "helix" and helix_placement is not None:
            placements[method] = placement_for(topology, helix_placement, time_limit_s, cost_model.workload)
            continue
        from helix_jax.solver.plan import plan  # heavy (cvxpy): imported only when planning

        with console.status(f"planning {method} ..."):
            placements[method] = plan(topology, method=method, time_limit_s=time_limit_s, seed=seed, cost_model=cost_model)
        p = placements[method]
        console.print(
            f"  {method}: max-flow {p.objective_tokens_per_s:,.1f} tok/s ({p.status}, {p.solve_seconds:.1f} s, {len(p.ranges)} nodes)"
        )
    return placements


def bench(
    topology: Optional[Path] = typer.Argument(None, help="Topology JSON (with --simulate)."),
    simulate: bool = typer.Option(False, "--simulate", help="Plan and simulate every method."),
    endpoint: Optional[str] = typer.Option(
        None, help="Bench a live deployment: tcp://HOST:PORT (ZeroMQ) or http://HOST:PORT (any OpenAI-compatible server)."
    ),
    connection: Optional[Path] = typer.Option(
        None, help="Bench the deployment of this connection.json (endpoint and CURVE keys; printed by deploy)."
    ),
    methods: str = typer.Option(DEFAULT_METHODS, help="Placement methods to compare (comma-separated)."),
    schedulers: str = typer.Option("iwrr", help="Schedulers: iwrr, random, shortest-queue, swarm."),
    mode: str = typer.Option("offline", help="offline (closed loop) or online (open loop arrivals)."),
    rate: Optional[float] = typer.Option(None, help="Online arrival rate in requests/s."),
    rates: Optional[str] = typer.Option(None, help="Online rate sweep, e.g. 0.5,1,2."),
    duration: Optional[float] = typer.Option(None, help="Seconds (simulated: 600; live: 60)."),
    warmup: Optional[float] = typer.Option(None, help="Seconds excluded from metrics (sim: 120; live: 10)."),
    trace: Optional[Path] = typer.Option(None, help="CSV with input_tokens,output_tokens columns."),
    arrivals: Optional[Path] = typer.Option(None, help="CSV with a requests_in_3s column: shapes online arrivals."),
    prompt_tokens: Optional[int] = typer.Option(None, help="Fixed prompt length (with --output-tokens)."),
    output_tokens: Optional[int] = typer.Option(None, help="Fixed output length (with --prompt-tokens)."),
    seed: int = typer.Option(0, help="Seed of lengths, arrivals and random policies."),
    time_limit: float = typer.Option(60.0, help="Planner time limit per method, seconds."),
    placement: Optional[Path] = typer.Option(None, help="Use this placement file for helix instead of planning."),
    slo_ttft_ms: float = typer.Option(math.inf, help="Goodput SLO on time to first token, ms."),
    slo_tpot_ms: float = typer.Option(math.inf, help="Goodput SLO on time per output token, ms."),
    concurrency: int = typer.Option(8, help="Live offline mode: requests kept in flight."),
    max_context: Optional[int] = typer.Option(None, help="Live: cap prompt+output tokens."),
    ignore_eos: bool = typer.Option(
        False, "--ignore-eos", help="Live: every request runs to its sampled output length (EOS does not end it; vLLM's extension)."
    ),
    out: Optional[Path] = typer.Option(None, help="Write results.json and PNG plots here."),
    slo_sweep: Optional[str] = typer.Option(
        None, help="With --simulate: plan at each round-trip SLO (ms, comma-separated), simulate each, table and PNG."
    ),
) -> None:
    """Compare placements and schedulers in simulation, or measure a live deployment."""
    from helix_jax.bench.live import rates_list
    from helix_jax.workload import length_sampler, load_arrival_counts

    console = Console()
    keys = None
    if connection is not None:
        from helix_jax.runtime.security import read_connection_file

        if endpoint is not None:
            raise ConfigError("--connection and --endpoint exclude each other (the file names the endpoint)")
        endpoint, keys = read_connection_file(connection)
    if simulate == (endpoint is not None):
        raise ConfigError("choose exactly one of --simulate (with a TOPOLOGY) or --endpoint / --connection")
    rate_values = rates_list(rates, rate)
    if mode == "online" and not rate_values:
        raise ConfigError("online mode needs --rate or --rates")
    if mode == "offline" and rate_values:
        raise ConfigError("--rate/--rates apply to --mode online only")
    lengths = length_sampler(trace, prompt_tokens, output_tokens)
    counts = tuple(load_arrival_counts(arrivals)) if arrivals is not None else None
    if simulate:
        if topology is None:
            raise ConfigError("--simulate needs a TOPOLOGY file")
        if slo_sweep is not None:
            _sweep(console, topology, slo_sweep, mode, rate_values, duration, warmup, lengths, counts, seed, time_limit, out)
            return
        _simulated(
            console,
            topology,
            _split(methods, "methods"),
            _split(schedulers, "schedulers"),
            mode,
            rate_values,
            duration if duration is not None else 600.0,
            warmup if warmup is not None else 120.0,
            lengths,
            counts,
            seed,
            time_limit,
            placement,
            slo_ttft_ms,
            slo_tpot_ms,
            out,
        )
    else:
        _live(
            console,
            endpoint,
            mode,
            rate_values,
            duration if duration is not None else 60.0,
            warmup if warmup is not None else 10.0,
            lengths,
            counts,
            seed,
            concurrency,
            max_context,
            slo_ttft_ms,
            slo_tpot_ms,
            out,
            keys,
            ignore_eos,
        )


def _sweep(console, topology_path, text, mode, rate_values, duration, warmup, lengths, counts, seed, time_limit, out) -> None:
    from helix_jax.cli.slo_sweep import parse_limits, run_sweep
    from helix_jax.costmodel import CostModel
    from helix_jax.sim import SimConfig
    from helix_jax.topology import load_topology

    limits_ms = parse_limits(text)
    topo = load_topology(topology_path)
    base = SimConfig(
        mode=mode,
        duration_s=duration if duration is not None else 600.0,
        warmup_s=warmup if warmup is not None else 120.0,
        rate_per_s=rate_values[0] if rate_values else None,
        arrival_counts=counts,
        seed=seed,
    )
    run_sweep(console, topo, CostModel(topo, lengths.shape), lengths, base, limits_ms, time_limit, seed, out)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _simulated(
    console,
    topology_path,
    methods,
    schedulers,
    mode,
    rate_values,
    duration_s,
    warmup_s,
    lengths,
    counts,
    seed,
    time_limit_s,
    placement,
    slo_ttft_ms,
    slo_tpot_ms,
    out,
) -> None:
    from helix_jax.bench.report import COMPACT_BELOW_COLUMNS, results_table, write_results
    from helix_jax.bench.runner import bench_cases, run_simulated_bench
    from helix_jax.costmodel import CostModel
    from helix_jax.sim import SimConfig
    from helix_jax.topology import load_topology

    topo = load_topology(topology_path)
    cost = CostModel(topo, lengths.shape)  # plan for the workload that is simulated
    base = SimConfig(
        mode=mode,
        duration_s=duration_s,
        warmup_s=warmup_s,
        rate_per_s=rate_values[0] if rate_values else None,
        arrival_counts=counts,
        seed=seed,
        slo_ttft_ms=slo_ttft_ms,
        slo_tpot_ms=slo_tpot_ms,
    )
    cases = bench_cases(methods, schedulers, rate_values)
    console.print(f"[bold]{topo.name}[/]: placements for {', '.join(methods)}, planned for {lengths.name} ({cost.workload.describe()})")
    placements = plan_methods(topo, cost, methods, time_limit_s, seed, placement, console)
    with _progress(console) as bar:
        task = bar.add_task("simulating", total=len(cases) * duration_s)
        state = {"index": 0}

        def on_case(case, index):
            state["index"] = index
            bar.update(task, description=f"simulating {case.label}", completed=index * duration_s)

        def progress(sim_s):
            bar.update(task, completed=state["index"] * duration_s + sim_s)

        report = run_simulated_bench(cost, placements, cases, lengths, base, on_case, progress)
    console.print(results_table(report, compact=console.width < COMPACT_BELOW_COLUMNS))
    for r in report.ratios():
        at = "" if r.rate_per_s is None else f" at {r.rate_per_s:g} req/s"
        console.print(f"helix/iwrr vs {r.baseline}/{r.policy}{at}: [bold]{r.ratio:.2f}x[/] decode throughput")
    if out is not None:
        from helix_jax.bench.plots import write_plots

        path = write_results(report, out)
        plots = write_plots(report, out)
        console.print(f"wrote {path} and {', '.join(p.name for p in plots)}")


def _live(
    console,
    endpoint,
    mode,
    rate_values,
    duration_s,
    warmup_s,
    lengths,
    counts,
    seed,
    concurrency,
    max_context,
    slo_ttft_ms,
    slo_tpot_ms,
    out,
    keys=None,
    ignore_eos=False,
) -> None:
    from helix_jax.bench.live import LiveConfig, run_live_bench
    from helix_jax.bench.report import live_table, write_results

    results = []
    for rate_value in rate_values or [None]:
        config = LiveConfig(
            mode=mode,
            duration_s=duration_s,
            warmup_s=warmup_s,
            rate_per_s=rate_value,
            arrival_counts=counts,
            concurrency=concurrency,
            seed=seed,
            max_context_tokens=max_context,
            slo_ttft_ms=slo_ttft_ms,
            slo_tpot_ms=slo_tpot_ms,
            ignore_eos=ignore_eos,
        )
        with _progress(console) as bar:
            task = bar.add_task(f"benchmarking {endpoint}", total=duration_s)
            result = run_live_bench(endpoint, lengths, config, lambda t: bar.update(task, completed=t), keys)
        console.print(live_table(result))
        results.append(result)
    if out is not None:
        from helix_jax.bench.plots import latency_cdf

        path = write_results({"endpoint": endpoint, "workload": lengths.name, "runs": [r.to_dict() for r in results]}, out)
        label = lambda r: f"{r.config.mode}" + (f" @{r.config.rate_per_s:g}/s" if r.config.rate_per_s else "")  # noqa: E731
        plot = latency_cdf([(label(r), r.metrics) for r in results], f"{endpoint}: latency CDFs", Path(out) / "latency_cdf.png")
        console.print(f"wrote {path} and {plot.name}")


def register(app: typer.Typer) -> None:
    app.command()(bench)
