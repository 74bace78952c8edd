"""CURVE benchmark (part of `make bench-serve`): what authenticating every ZeroMQ socket costs.

The default deployment (SmolLM2-135M-Instruct on the shipped cpu-small cluster: 3 CPU worker
processes, the planner's placement), deployed twice and kept up side by side, with plain TCP
and with CURVE keys; the deploy-to-ready time of each. Then `--rounds` rounds, each measuring
both transports in alternating order (plain first in even rounds, CURVE first in odd ones), so
that the load of a shared machine falls on both alike:

1. one request at a time (`--singles` of them, `--max-tokens` each): the median TPOT. Its round
   trip crosses every hop, so (TPOT CURVE - TPOT plain) / hops per round trip is the cost of
   encryption per hop, and (TPOT plain - TPOT of the whole model in this process) / hops the
   pipeline's own overhead per hop;
2. `--streams` concurrent greedy requests: decode tokens/s.

Every round records the 1-minute load average (`os.getloadavg`, as `uptime` prints it). Medians
over the rounds are reported. Workers and the in-process model get one XLA thread each.

  python -m helix_jax.cli.curve_bench [--rounds 5] [--streams 16] [--max-tokens 32] [--singles 3]
  python -m helix_jax.cli.curve_bench --tiny       # the tiny-8 cluster (serve_bench.bench_cpu_small)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

MODEL = "smollm2-135m"
SHARED_CPU_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"  # as LocalDeployment gives its workers


def _prompts(count: int, tokens: int) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [[int(t) for t in rng.integers(100, 40000, size=tokens)] for _ in range(count)]


def local_tpot_ms(prompt: list[int], max_tokens: int, runs: int = 3) -> float:
    """Median TPOT of the whole model in this process (one StageEngine), greedy."""
    from helix_jax.model.generate import LocalModel
    from helix_jax.modelconfig import preset

    model = LocalModel(preset(MODEL), MODEL, max_seq_len=len(prompt) + max_tokens)
    tpots = []
    for _ in range(runs + 1):  # the first run touches cold paths
        stamps: list[float] = []
        model.generate(prompt, max_tokens, stop_at_eos=False, on_token=lambda _t: stamps.append(time.perf_counter()))
        tpots.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    return statistics.median(tpots[1:]) * 1e3


def measure(client: Any, prompts: list[list[int]], max_tokens: int, singles: int) -> dict:
    """Median TPOT of one request at a time, then tokens/s of all `prompts` at once."""
    single = [client.generate(prompts[0], max_tokens=max_tokens) for _ in range(singles)]
    began = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        batch = list(pool.map(lambda p: client.generate(p, max_tokens=max_tokens), prompts))
    wall = time.perf_counter() - began
    return {
        "tpot_ms": statistics.median(r.timings.tpot_s for r in single) * 1e3,
        "hops": statistics.mean(len(r.route) + 1 for r in single),  # coordinator -> hops -> coordinator
        "tokens_per_s": sum(len(r.ids) for r in batch) / wall,
    }


def bench_default(rounds: int, streams: int, max_tokens: int, singles: int) -> dict:
    from helix_jax.cli.serve_cmds import serve_config
    from helix_jax.client import Client
    from helix_jax.runtime.deploy import LocalDeployment

    prompts = _prompts(streams, 16)
    max_seq_len = 16 + max_tokens
    out: dict = {
        "model": MODEL,
        "streams": streams,
        "max_tokens": max_tokens,
        "singles": singles,
        "local_tpot_ms": local_tpot_ms(prompts[0], max_tokens),
        "ready_s": {},
        "rounds": [],
    }
    with contextlib.ExitStack() as stack:
        clients = {}
        for transport in ("plain", "curve"):
            cfg, codec = serve_config(
                None, None, None, False, 1.0, "127.0.0.1", 0, streams * max_seq_len, max_seq_len, 10.0, secure=transport == "curve"
            )
            out["placement"] = {n: list(r) for n, r in cfg.placement.ranges.items()}
            began = time.perf_counter()
            dep = stack.enter_context(LocalDeployment(cfg, codec))
            dep.wait_ready(timeout_s=1800)
            out["ready_s"][transport] = time.perf_counter() - began
            keys = cfg.keys.client() if cfg.keys is not None else None
            clients[transport] = stack.enter_context(Client(dep.client_endpoint, timeout_s=900, keys=keys))
            measure(clients[transport], prompts, max_tokens, 1)  # first batches touch cold paths
        for r in range(rounds):
            order = ("plain", "curve") if r % 2 == 0 else ("curve", "plain")
            row: dict = {"load_1min": os.getloadavg()[0], "order": list(order)}
            for transport in order:
                row[transport] = measure(clients[transport], prompts, max_tokens, singles)
            row["load_1min_end"] = os.getloadavg()[0]
            out["rounds"].append(row)
            print(
                f"  round {r + 1}: load {row['load_1min']:.2f}-{row['load_1min_end']:.2f}; "
                + "; ".join(f"{t} TPOT {row[t]['tpot_ms']:.1f} ms, {row[t]['tokens_per_s']:.1f} tok/s" for t in order),
                flush=True,
            )
    med = {
        t: {k: statistics.median(row[t][k] for row in out["rounds"]) for k in ("tpot_ms", "tokens_per_s", "hops")}
        for t in ("plain", "curve")
    }
    hops = med["curve"]["hops"]
    out["median"] = med
    out["curve_ms_per_hop"] = (med["curve"]["tpot_ms"] - med["plain"]["tpot_ms"]) / hops
    out["pipeline_ms_per_hop"] = (med["plain"]["tpot_ms"] - out["local_tpot_ms"]) / hops
    out["curve_throughput_cost"] = 1 - med["curve"]["tokens_per_s"] / med["plain"]["tokens_per_s"]
    out["curve_throughput_cost_per_round"] = [1 - row["curve"]["tokens_per_s"] / row["plain"]["tokens_per_s"] for row in out["rounds"]]
    return out


def bench_tiny(streams: int, max_tokens: int) -> None:
    from helix_jax.cli.serve_bench import bench_cpu_small

    off, on = (bench_cpu_small(streams, max_tokens, secure=secure, local=False) for secure in (False, True))
    print(f"[curve] cpu-tiny, {on['route_hops']:.1f} hops per round trip, {streams} streams of {max_tokens} tokens")
    for label, r in (("plain TCP", off), ("CURVE", on)):
        d = r["deployed"]
        print(
            f"  {label:9s}: ready in {r['ready_s']:.1f} s, 1-request TPOT {d['tpot_ms']:.2f} ms, "
            f"{streams} streams {d['batch_tokens_per_s']:.1f} tok/s"
        )
    cost_ms = (on["deployed"]["tpot_ms"] - off["deployed"]["tpot_ms"]) / on["route_hops"]
    share = 1 - on["deployed"]["batch_tokens_per_s"] / off["deployed"]["batch_tokens_per_s"]
    print(f"  CURVE costs {cost_ms:.3f} ms per hop and {share:.1%} of {streams}-stream throughput (target < 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny-8 cluster instead of the default deployment")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--singles", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.tiny:
        bench_tiny(args.streams, args.max_tokens)
        return
    os.environ.setdefault("XLA_FLAGS", SHARED_CPU_XLA_FLAGS)  # before jax starts: the local model as a worker
    print(f"[curve] {MODEL}, default deployment, plain TCP and CURVE side by side, {args.rounds} rounds", flush=True)
    r = bench_default(args.rounds, args.streams, args.max_tokens, args.singles)
    med = r["median"]
    print(
        f"[curve] placement {r['placement']}, {med['curve']['hops']:.1f} hops per round trip; deploy-to-ready "
        f"plain {r['ready_s']['plain']:.1f} s, CURVE {r['ready_s']['curve']:.1f} s"
    )
    for t, label in (("plain", "plain TCP"), ("curve", "CURVE")):
        print(f"  {label:9s} medians: 1-request TPOT {med[t]['tpot_ms']:.1f} ms, {r['streams']} streams {med[t]['tokens_per_s']:.1f} tok/s")
    print(
        f"  whole model in this process: TPOT {r['local_tpot_ms']:.1f} ms; pipeline overhead "
        f"{r['pipeline_ms_per_hop']:.2f} ms per hop (plain TCP)"
    )
    print(
        f"  CURVE costs {r['curve_ms_per_hop']:.3f} ms per hop and {r['curve_throughput_cost']:.1%} of "
        f"{r['streams']}-stream throughput (median of rounds; per round: "
        + ", ".join(f"{c:.1%}" for c in r["curve_throughput_cost_per_round"])
        + "; target < 10%)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
