"""Simulator cost at scale (issue 21), for `make bench-sim`: scale rows and the before/after table.

A script module beside sim_bench.py (it plans with the solver). Data flow of a scale row:
`synthetic_topology(gpus, regions)` -> topology file -> plan (helix with a short time limit, or
a baseline where helix cannot plan that size here) -> placement file -> one offline run in a
child process (so neither the planner's memory nor another run's counts) -> wall time, peak
RSS, events, throughput against the placement's max-flow.

* scale rows: `--scale-sizes` GPUs x `--scale-regions` regions, `--scale-duration` simulated
  seconds with `--scale-warmup` warm-up; placements are kept under `OUT/scale/` and reused
  with `--reuse-placements`.
* before/after: each paper cluster's Helix placement simulated by `ReferenceSimulator` (one
  event per message, the engine before issue 21) and by `Simulator` (one per step), also in
  child processes: throughput and latency means must agree, events and wall time drop.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helix_jax.bench.synthetic import synthetic_topology
from helix_jax.costmodel import CostModel
from helix_jax.placement import Placement
from helix_jax.sim import SimConfig
from helix_jax.sim.engine import Simulator
from helix_jax.sim.reference import ReferenceSimulator
from helix_jax.topology import load_topology
from helix_jax.workload import AzureConversationLengths

ENGINES = {"fast": Simulator, "reference": ReferenceSimulator}
HELIX_MAX_GPUS = 200  # above this the helix planner needs more than this machine's 23 GiB today


def peak_rss_mib() -> float:
    """This process image's peak resident memory (VmHWM; ru_maxrss would include the parent's
    peak, which Linux keeps across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(topology: Path, placement: Path, duration_s: float, warmup_s: float, engine: str = "fast") -> dict:
    """One offline run in this process (the child's side of `measure_in_child`)."""
    cost = CostModel(load_topology(topology))
    sim = ENGINES[engine](Placement.load(placement), cost, AzureConversationLengths(), SimConfig(duration_s=duration_s, warmup_s=warmup_s))
    start, cpu_start = time.perf_counter(), time.process_time()
    res = sim.run()
    m = res.metrics
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "sim_wall_s": res.wall_s,
        "events": res.events,
        "events_by_kind": res.events_by_kind,
        "steps": sum(n.steps for n in res.nodes),
        "peak_rss_mib": peak_rss_mib(),
        "decode_tokens_per_s": m.decode_tokens_per_s,
        "max_flow_tokens_per_s": res.max_flow_tokens_per_s,
        "flow_fraction": res.flow_fraction,
        "ttft_mean_ms": m.ttft.mean_ms,
        "tpot_mean_ms": m.tpot.mean_ms,
        "completed": res.completed,
        "mean_in_flight": res.mean_in_flight,
        "simulated_s": duration_s,
        "engine": engine,
    }


def measure_in_child(topology: Path, placement: Path, duration_s: float, warmup_s: float, engine: str, timeout_s: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "helix_jax.cli.sim_bench",
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup_s),
        "--engine",
        engine,
        "--measure-one",
        str(topology),
        str(placement),
    ]
    try:
        child = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"timed_out_s": timeout_s, "engine": engine, "simulated_s": duration_s}
    return json.loads(child.stdout)


def scale_placement(
    gpus: int, regions: int, method: str, time_limit_s: float, out: Path, reuse: bool
) -> tuple[Path, Path, Placement, float]:
    """Topology and placement files of one scale row (planned, or reused from `out`); the last
    item is the planning time in seconds (0 when reused)."""
    from helix_jax.solver.plan import plan

    out.mkdir(parents=True, exist_ok=True)
    topo_path = out / f"synthetic-{gpus}g-{regions}r.json"
    topo_path.write_text(json.dumps(synthetic_topology(gpus, regions), indent=1) + "\n")
    place_path = out / f"synthetic-{gpus}g-{regions}r-{method}.json"
    if reuse and place_path.exists():
        return topo_path, place_path, Placement.load(place_path), 0.0
    topo = load_topology(topo_path)
    t0 = time.perf_counter()
    placement = plan(topo, method=method, time_limit_s=time_limit_s, cost_model=CostModel(topo))
    placement.save(place_path)
    return topo_path, place_path, placement, time.perf_counter() - t0


def scale_method(gpus: int, method: str) -> str:
    """`auto`: helix up to HELIX_MAX_GPUS, petals above."""
    if method != "auto":
        return method
    return "helix" if gpus <= HELIX_MAX_GPUS else "petals"


def run_scale(
    sizes: list[int],
    regions: list[int],
    method: str,
    time_limit_s: float,
    duration_s: float,
    warmup_s: float,
    out: Path,
    reuse: bool,
    timeout_s: float,
) -> list[dict[str, Any]]:
    rows = []
    for r in regions:
        for gpus in sizes:
            chosen = scale_method(gpus, method)
            topo_path, place_path, placement, plan_s = scale_placement(gpus, r, chosen, time_limit_s, out, reuse)
            print(
                f"[scale] {gpus} GPUs, {r} region(s): {chosen} planned in {plan_s:.0f} s, "
                f"{len(placement.ranges)} nodes, max-flow {placement.objective_tokens_per_s:.0f} tok/s",
                flush=True,
            )
            row = {
                "gpus": gpus,
                "regions": r,
                "method": chosen,
                "nodes": len(placement.ranges),
                "mean_hops": placement.extra.get("mean_hops"),
                "plan_s": plan_s,
                **measure_in_child(topo_path, place_path, duration_s, warmup_s, "fast", timeout_s),
            }
            print("[scale] " + json.dumps(row), flush=True)
            rows.append(row)
    return rows


def scale_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| GPUs | regions | nodes | placement (mean hops) | max-flow tok/s | decode tok/s | of max-flow | "
        "events | events / sim min | steps / sim min | wall s | wall s / sim min | CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['gpus']} | {row['regions']} | {row['nodes']} | {row['method']} ({row['mean_hops'] or 0:.1f}) |"
        if "timed_out_s" in row:
            lines.append(head + f" - | - | - | - | - | - | > {row['timed_out_s']:.0f} | - | - | - |")
            continue
        minutes = row["simulated_s"] / 60
        lines.append(
            head + f" {row['max_flow_tokens_per_s']:.0f} | {row['decode_tokens_per_s']:.0f} | "
            f"{100 * row['flow_fraction']:.0f}% | {row['events'] / 1e6:.2f} M | "
            f"{row['events'] / minutes / 1e3:.0f} k | {row['steps'] / minutes / 1e3:.0f} k | "
            f"{row['wall_s']:.1f} | {row['wall_s'] / minutes:.2f} | {row['cpu_s']:.1f} | "
            f"{row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def run_compare(
    clusters: list[str], placements: dict[str, Path], repo: Path, duration_s: float, warmup_s: float, timeout_s: float
) -> list[dict[str, Any]]:
    """Reference vs fast engine on each cluster's Helix placement (`placements[name]`)."""
    rows = []
    for name in clusters:
        topo_path = repo / "topologies" / f"{name}.json"
        runs = {
            engine: measure_in_child(topo_path, placements[name], duration_s, warmup_s, engine, timeout_s)
            for engine in ("reference", "fast")
        }
        rows.append({"cluster": name, **runs})
        print(f"[compare] {name}: " + json.dumps(runs), flush=True)
    return rows


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| cluster | decode tok/s, reference / fast | difference | TTFT mean s | TPOT mean ms | events, "
        "reference / fast | wall s, reference / fast | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref, fast = row["reference"], row["fast"]
        diff = (fast["decode_tokens_per_s"] / ref["decode_tokens_per_s"] - 1) if ref["decode_tokens_per_s"] else 0.0
        lines.append(
            f"| {row['cluster']} | {ref['decode_tokens_per_s']:.2f} / {fast['decode_tokens_per_s']:.2f} | "
            f"{100 * diff:+.2f}% | {ref['ttft_mean_ms'] / 1e3:.2f} / {fast['ttft_mean_ms'] / 1e3:.2f} | "
            f"{ref['tpot_mean_ms']:.1f} / {fast['tpot_mean_ms']:.1f} | {ref['events']:,} / {fast['events']:,} | "
            f"{ref['wall_s']:.1f} / {fast['wall_s']:.1f} | {ref['peak_rss_mib']:.0f} / "
            f"{fast['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)
