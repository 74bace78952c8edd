"""Serving benchmark, section 2 (`make bench-serve`, `cli/serve_bench.py`): failover on the
small CPU topology.

Concurrent long greedy requests stream through a planned tiny-8 deployment while the worker that
starts the multi-hop route is killed (SIGKILL). Reports whether every request finished, how many
were resumed on another route, the longest pause any client saw between two tokens, and the
deployment's decode tokens/s and max-flow before and after the kill. Sits in the CLI layer (it
plans with solver/); deploys locally, touches nothing but the deployment, its client and the
one worker process it kills.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from helix_jax.client import Client
from helix_jax.runtime.deploy import LocalDeployment
from helix_jax.runtime.serve_config import ServeConfig
from helix_jax.topology import load_topology, tiny_topology_path


def bench_failover(requests: int, max_tokens: int, kill_after_s: float) -> dict:
    """cpu-tiny, planned: `requests` concurrent greedy requests of `max_tokens`; the worker that
    starts the multi-hop route is killed `kill_after_s` after they are sent."""
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.solver.maxflow import survivor_flows
    from helix_jax.solver.plan import plan

    topo = load_topology(tiny_topology_path())
    rng = random.Random(2)
    prompts = [[256] + [rng.randrange(256) for _ in range(15)] for _ in range(requests)]
    max_seq_len = 16 + max_tokens
    placement = plan(topo, time_limit_s=10)
    first_hops = [n for n, (s, _) in placement.ranges.items() if s == 0]
    victim = next((n for n in first_hops if placement.ranges[n][1] < topo.model.num_layers), first_hops[0])
    cfg = ServeConfig(
        topo,
        placement,
        topo.model,
        weights="random:0",
        max_seq_len=max_seq_len,
        kv_tokens=requests * max_seq_len,
        flow_planner=functools.partial(survivor_flows, topo, placement),
    )
    with LocalDeployment(cfg, load_tokenizer(topo.model)) as dep:
        dep.wait_ready()
        with Client(dep.client_endpoint, timeout_s=600) as client:
            client.generate(prompts[0], max_tokens=4)  # first requests touch cold paths
            pid = next(w.process.pid for w in dep.workers if w.node == victim)
            sent = time.perf_counter()
            with ThreadPoolExecutor(requests) as pool:
                futures = [pool.submit(client.generate, p, max_tokens=max_tokens) for p in prompts]
                time.sleep(kill_after_s)
                os.kill(pid, signal.SIGKILL)
                killed = time.perf_counter() - sent
                results = [f.result() for f in futures]
        stats = dep.coordinator.stats()
    stamps = sorted(t for r in results for t in r.timings.token_times_s)
    before = sum(1 for t in stamps if t < killed)
    after = [t for t in stamps if t >= killed]
    gaps = [b - a for r in results for a, b in zip(r.timings.token_times_s, r.timings.token_times_s[1:])]
    return {
        "placement": {n: list(r) for n, r in placement.ranges.items()},
        "killed": victim,
        "kill_at_s": killed,
        "requests": requests,
        "max_tokens": max_tokens,
        "completed": sum(len(r.ids) == max_tokens or r.finish_reason == "eos" for r in results),
        "resumed": stats["resumed"],
        "down_nodes": stats["down_nodes"],
        "longest_pause_ms": max(gaps) * 1e3,
        "median_gap_ms": statistics.median(gaps) * 1e3,
        "tokens_per_s_before": before / killed,
        "tokens_per_s_after": len(after) / (after[-1] - killed) if len(after) > 1 else 0.0,
        "flow_before": placement.objective_tokens_per_s,
        "flow_after": stats["flow_tokens_per_s"],
    }


def print_failover(r: dict) -> None:
    """The two `[failover]` lines of `make bench-serve`."""
    print(
        f"[failover] cpu-tiny {r['placement']}: {r['requests']} requests of {r['max_tokens']} tokens, "
        f"worker {r['killed']} killed {r['kill_at_s']:.2f} s after they were sent"
    )
    print(
        f"[failover] {r['completed']}/{r['requests']} finished, {r['resumed']} resumed on another route; "
        f"longest pause between two tokens {r['longest_pause_ms']:.0f} ms (median gap "
        f"{r['median_gap_ms']:.1f} ms); decode {r['tokens_per_s_before']:.0f} tok/s before, "
        f"{r['tokens_per_s_after']:.0f} after; max-flow {r['flow_before']:.0f} -> {r['flow_after']:.0f} tok/s"
    )
