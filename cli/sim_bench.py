"""`make bench-sim`: the paper's three LLaMA-2-70B clusters, simulated offline and online, for
the Helix placement and the Swarm, Petals and separate-pipelines baselines.

A script, not library code (it plans with the solver): run as `python -m helix_jax.cli.sim_bench`.
For each cluster it plans every method once, then simulates
* offline: closed loop, 1800 s with 600 s warm-up by default (a request lives for minutes at
  2-3 s per token, and the start fills the whole cluster's KV with prompts at once, so shorter
  windows measure the start-up transient), every method with IWRR, and Swarm/Petals also with
  their own latency-driven scheduler ("swarm");
* online: Poisson arrivals (or `--arrivals CSV` shaped) at one rate per cluster, chosen so the
  offered decode load is `--online-load` x Helix's offline throughput (same rate for all methods).
It prints markdown tables (the BENCHMARKS.md section is pasted from them), writes results.json
per cluster and mode under `--out`, and measures the wall time and peak memory of the 600 s
offline run of the 24-node cluster in a child process (so the solver's memory is not counted).

Then (sim_scale.py, issue 21) the simulator's own cost: a before/after table (each cluster's Helix
placement under the message-per-event reference engine and the per-step engine) and scale rows
on synthetic clusters of `--scale-sizes` GPUs in `--scale-regions` regions. `--scale-only` skips
the paper-cluster bench tables; `--no-scale` and `--no-compare` skip the new parts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

from helix_jax.bench.report import write_results
from helix_jax.bench.runner import BenchCase, BenchReport, run_simulated_bench
from helix_jax.cli.sim_scale import (
    ENGINES,
    compare_markdown,
    measure_one,
    run_compare,
    run_scale,
    scale_markdown,
)
from helix_jax.costmodel import CostModel
from helix_jax.sim import SimConfig
from helix_jax.topology import load_topology
from helix_jax.workload import length_sampler, load_arrival_counts

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = ("single-region-24-llama2-70b", "three-region-24-llama2-70b", "geo-42-llama2-70b")
METHODS = ("helix", "swarm", "petals", "sp")
CASES = (("helix", "iwrr"), ("swarm", "iwrr"), ("swarm", "swarm"), ("petals", "iwrr"), ("petals", "swarm"), ("sp", "iwrr"))
PUBLISHED_OFFLINE = {  # HELIX.md section 7: Helix / Swarm / separate pipelines, decode tok/s
    "single-region-24-llama2-70b": (252.1, 124.7, 124.3),
    "three-region-24-llama2-70b": (98.0, 51.9, 61.9),
    "geo-42-llama2-70b": (645.6, 473.2, 219.3),
}


def _markdown(report: BenchReport) -> str:
    lines = [
        "| method | scheduler | max-flow tok/s | decode tok/s | of max-flow | helix x | req/s | "
        "TTFT p50 / p95 s | TPOT p50 / p95 ms | mean in flight |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, res in report.results:
        m = res.metrics
        helix_x = report.helix_ratio(case, res)
        ratio = "-" if helix_x is None or math.isinf(helix_x) else f"{helix_x:.2f}x"
        lines.append(
            f"| {case.method} | {case.policy} | {res.max_flow_tokens_per_s:.1f} | "
            f"{m.decode_tokens_per_s:.1f} | {100 * res.flow_fraction:.0f}% | {ratio} | "
            f"{m.requests_per_s:.2f} | {m.ttft.p50_ms / 1e3:.1f} / {m.ttft.p95_ms / 1e3:.1f} | "
            f"{m.tpot.p50_ms:.0f} / {m.tpot.p95_ms:.0f} | {res.mean_in_flight:.0f} |"
        )
    bounds = ", ".join(f"{method} {p['kv_concurrency_bound_requests']:.0f}" for method, p in report.placements.items())
    lines.append(
        f"\nKV concurrency bound (requests in flight, residence-weighted {report.settings['resident_kv_tokens']:.0f} tokens each): {bounds}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clusters", default=",".join(CLUSTERS))
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "sim")
    ap.add_argument("--time-limit", type=float, default=60.0, help="planner seconds per helix plan")
    ap.add_argument("--duration", type=float, default=1800.0)
    ap.add_argument("--warmup", type=float, default=600.0)
    ap.add_argument("--online-load", type=float, default=0.8)
    ap.add_argument("--arrivals", type=Path, default=None, help="requests_in_3s CSV to shape arrivals")
    ap.add_argument("--trace", type=Path, default=None, help="input_tokens,output_tokens CSV")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale-only", action="store_true", help="skip the paper-cluster bench tables")
    ap.add_argument("--no-scale", action="store_true", help="skip the synthetic scale rows")
    ap.add_argument("--no-compare", action="store_true", help="skip the reference vs per-step engine table")
    ap.add_argument("--scale-sizes", default="50,200,1000", help="GPUs per synthetic cluster")
    ap.add_argument("--scale-regions", default="1", help="regions per synthetic cluster, e.g. 1,4,10")
    ap.add_argument("--scale-method", default="auto", help="placement of the scale rows (auto: helix up to 200 GPUs, petals above)")
    ap.add_argument("--scale-time-limit", type=float, default=60.0, help="planner seconds per scale helix plan")
    ap.add_argument("--scale-duration", type=float, default=600.0)
    ap.add_argument("--scale-warmup", type=float, default=200.0)
    ap.add_argument("--scale-timeout", type=float, default=1800.0, help="wall seconds per scale run")
    ap.add_argument("--reuse-placements", action="store_true", help="reuse placements already under --out")
    ap.add_argument("--engine", choices=sorted(ENGINES), default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--measure-one", nargs=2, metavar=("TOPOLOGY", "PLACEMENT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure_one:
        print(json.dumps(measure_one(Path(args.measure_one[0]), Path(args.measure_one[1]), args.duration, args.warmup, args.engine)))
        return
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    clusters = args.clusters.split(",")
    if not args.scale_only:
        paper_bench(args, clusters)
    scale: dict = {}
    if not args.no_compare:
        placements = {name: helix_placement(name, args) for name in clusters}
        scale["compare"] = run_compare(clusters, placements, REPO, args.duration, args.warmup, args.scale_timeout)
        print(f"\n### Reference (one event per message) vs per-step engine, offline {args.duration:g} s, {args.warmup:g} s warm-up\n")
        print(compare_markdown(scale["compare"]), flush=True)
    if not args.no_scale:
        scale["scale"] = run_scale(
            [int(g) for g in args.scale_sizes.split(",")],
            [int(r) for r in args.scale_regions.split(",")],
            args.scale_method,
            args.scale_time_limit,
            args.scale_duration,
            args.scale_warmup,
            args.out / "scale",
            args.reuse_placements,
            args.scale_timeout,
        )
        print(f"\n### Scale: offline {args.scale_duration:g} s, {args.scale_warmup:g} s warm-up\n")
        print(scale_markdown(scale["scale"]), flush=True)
    if scale:
        (args.out / "scale.json").write_text(json.dumps(scale, indent=2) + "\n")


def helix_placement(name: str, args: argparse.Namespace) -> Path:
    """The cluster's Helix placement file under --out (planned now unless there and reused;
    the paper bench saves one per cluster)."""
    path = args.out / f"{name}-helix.json"
    if not path.exists() or (args.scale_only and not args.reuse_placements):
        from helix_jax.solver.plan import plan

        topo = load_topology(REPO / "topologies" / f"{name}.json")
        plan(topo, method="helix", time_limit_s=args.time_limit, seed=args.seed, cost_model=CostModel(topo)).save(path)
    return path


def paper_bench(args: argparse.Namespace, clusters: list[str]) -> None:
    """The paper clusters' offline and online tables, and the 24-node run's cost (issue 5)."""
    from helix_jax.solver.plan import plan

    lengths = length_sampler(args.trace)
    counts = tuple(load_arrival_counts(args.arrivals)) if args.arrivals else None
    mean_output = lengths.mean_lengths[1]
    summary = {}
    for name in clusters:
        topo_path = REPO / "topologies" / f"{name}.json"
        topo = load_topology(topo_path)
        cost = CostModel(topo)
        placements = {}
        for method in METHODS:
            t0 = time.perf_counter()
            placements[method] = plan(topo, method=method, time_limit_s=args.time_limit, seed=args.seed, cost_model=cost)
            placements[method].save(args.out / f"{name}-{method}.json")
            print(
                f"[{name}] {method}: max-flow {placements[method].objective_tokens_per_s:.1f} tok/s "
                f"({placements[method].status}, {time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        offline_cfg = SimConfig(duration_s=args.duration, warmup_s=args.warmup, seed=args.seed)
        offline = run_simulated_bench(cost, placements, [BenchCase(m, p, None) for m, p in CASES], lengths, offline_cfg)
        helix_tok_s = offline.result("helix", "iwrr").metrics.decode_tokens_per_s
        rate = round(args.online_load * helix_tok_s / mean_output, 3)
        online_cfg = SimConfig(
            mode="online", duration_s=args.duration, warmup_s=args.warmup, rate_per_s=rate, arrival_counts=counts, seed=args.seed
        )
        online = run_simulated_bench(cost, placements, [BenchCase(m, p, rate) for m, p in CASES], lengths, online_cfg)
        for mode, report in (("offline", offline), ("online", online)):
            write_results(report, args.out / name / mode)
            print(f"\n### {name}, {mode}" + (f" ({rate:g} requests/s)" if mode == "online" else "") + "\n")
            print(_markdown(report), flush=True)
        summary[name] = {
            "online_rate_per_s": rate,
            "offline_ratios": [r.__dict__ for r in offline.ratios()],
            "published_offline": PUBLISHED_OFFLINE.get(name),
        }
    if "single-region-24-llama2-70b" in args.clusters:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "helix_jax.cli.sim_bench",
                "--duration",
                "600",
                "--warmup",
                "120",
                "--measure-one",
                str(REPO / "topologies" / "single-region-24-llama2-70b.json"),
                str(args.out / "single-region-24-llama2-70b-helix.json"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cost_figures = json.loads(child.stdout)
        summary["sim_cost_single_region_24_offline_600s"] = cost_figures
        print(
            f"\n600 s offline, 24 nodes, helix: {cost_figures['wall_s']:.1f} s wall, "
            f"peak RSS {cost_figures['peak_rss_mib']:.0f} MiB, {cost_figures['events']} events"
        )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
