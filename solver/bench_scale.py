"""Planner scale rows (issue 21): synthetic clusters of N GPUs in R regions, one child process each.

Part of `make bench-plan` (solver/bench_plan.py; `--scale-only` runs these rows alone):
synthetic_topology(N, R) (helix_jax/bench/synthetic.py) -> plan(helix, time limit) in a fresh
child process -> one row: wall time, the child's peak resident memory, throughput (true max-flow),
proven upper bound, gap, status, zones, node classes and the phases' start times. A fresh
process per row, so the peak memory is that row's alone (`ru_maxrss` of the child itself).
Figures, not assertions: they depend on the machine and its load.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

SCALE_GPUS = (50, 200, 1000)
SCALE_REGIONS = (1, 4, 10)


def scale_row(gpus: int, regions: int, time_limit_s: float) -> dict:
    """Plan one synthetic cluster here (in the child) and measure it."""
    from helix_jax.bench.synthetic import synthetic_topology
    from helix_jax.solver.plan import plan
    from helix_jax.topology import topology_from_dict

    topology = topology_from_dict(synthetic_topology(gpus, regions))
    t0 = time.monotonic()
    placement = plan(topology, time_limit_s=time_limit_s)
    wall_s = time.monotonic() - t0
    extra = placement.extra
    return {
        "gpus": gpus,
        "regions": regions,
        "nodes": len(topology.nodes),
        "time_limit_s": time_limit_s,
        "wall_s": round(wall_s, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "tokens_per_s": placement.objective_tokens_per_s,
        "upper_bound_tokens_per_s": placement.upper_bound_tokens_per_s,
        "gap": extra["gap"],
        "bound_source": extra["bound_source"],
        "status": placement.status,
        "source": extra["source"],
        "zones": extra["zones"],
        "node_classes": extra["node_classes"],
        "windows": len(extra.get("region_windows", {})),
        "flow_edges": len(placement.flows),
        "phases": extra["phases"],
    }


def run_scale(gpus: list[int], regions: list[int], time_limit_s: float, console: Console) -> list[dict]:
    """Every (N, R) row, each in its own child process (`python -m helix_jax.solver.bench_scale`)."""
    rows = []
    for n in gpus:
        for r in regions:
            cmd = [sys.executable, "-m", "helix_jax.solver.bench_scale", str(n), str(r), str(time_limit_s)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10 * time_limit_s + 120)
            if done.returncode != 0:
                console.log(f"scale {n} GPUs x {r} regions failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            console.log(
                f"scale {n:5d} GPUs x {r:2d} regions: {row['tokens_per_s']:9.1f} tok/s, bound "
                f"{row['upper_bound_tokens_per_s']:9.1f} ({100 * row['gap']:.2f}%), {row['wall_s']:.1f} s, "
                f"{row['peak_rss_gb']:.2f} GB"
            )
    print_scale(rows, console)
    return rows


def print_scale(rows: list[dict], console: Console) -> None:
    table = Table(title="planner scale: synthetic LLaMA-2-70B clusters (paper's 7 GPU kinds), helix")
    for col in (
        "GPUs",
        "regions",
        "nodes",
        "limit s",
        "wall s",
        "peak GB",
        "tokens/s",
        "bound",
        "gap",
        "bound from",
        "status",
        "source",
        "zones",
        "classes",
    ):
        table.add_column(col, justify="left" if col in ("bound from", "status", "source") else "right")
    for r in rows:
        table.add_row(
            str(r["gpus"]),
            str(r["regions"]),
            str(r["nodes"]),
            f"{r['time_limit_s']:g}",
            f"{r['wall_s']:.1f}",
            f"{r['peak_rss_gb']:.2f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['upper_bound_tokens_per_s']:.1f}",
            f"{100 * r['gap']:.2f}%",
            r["bound_source"],
            r["status"],
            r["source"],
            str(r["zones"]),
            str(r["node_classes"]),
        )
    console.print(table, width=200)


if __name__ == "__main__":  # the child: one row as one JSON line on stdout
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(scale_row(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))))
