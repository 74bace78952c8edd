"""Serving benchmark, section 3 (`make bench-serve`, `cli/serve_bench.py`): `--emulate` on the
paper's 24-node one-region LLaMA-2-70B cluster.

24 worker processes compute tiny-80 while pacing every step and transfer to A100/L4/T4 speed
x time scale (the cost model's step times and FIFO links). A closed loop of AsyncClients keeps
the cluster full; decode tokens/s over a window after warm-up (scaled back by the time
scale) is compared with the placement's max-flow. Sits in the CLI layer (it plans with
solver/); deploys locally, touches nothing but the deployment and its client.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from helix_jax.client import AsyncClient
from helix_jax.modelconfig import resolve_model
from helix_jax.runtime.deploy import LocalDeployment
from helix_jax.runtime.emulation import EmulationSpec
from helix_jax.runtime.serve_config import ServeConfig
from helix_jax.topology import load_topology

PAPER = Path(__file__).resolve().parent.parent / "topologies" / "single-region-24-llama2-70b.json"


async def closed_loop(endpoint: str, concurrency: int, prompt_tokens: int, max_tokens: int, duration_s: float) -> list[float]:
    """Keep `concurrency` requests in flight for `duration_s`; wall time of every token."""
    stamps: list[float] = []
    stop_at = time.perf_counter() + duration_s
    rng = random.Random(1)
    async with AsyncClient(endpoint, timeout_s=3600) as client:

        async def user() -> None:
            while True:
                prompt = [rng.randrange(256) for _ in range(prompt_tokens)]
                async for _ in client.stream(prompt, max_tokens=max_tokens):
                    stamps.append(time.perf_counter())

        # the users run until the deadline and are then cancelled (each stream sends its cancel):
        # waiting for every one of them to see one more token would wait for queued requests
        users = [asyncio.ensure_future(user()) for _ in range(concurrency)]
        await asyncio.wait(users, timeout=max(0.0, stop_at - time.perf_counter()))
        for task in users:
            task.cancel()
        await asyncio.gather(*users, return_exceptions=True)
    return stamps


def bench_emulated(
    time_scale: float, concurrency: int, warmup_s: float, window_s: float, prompt_tokens: int, max_tokens: int, plan_time_s: float
) -> dict:
    from helix_jax.costmodel import CostModel
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.solver.plan import plan
    from helix_jax.workload import FixedLengths

    topo = load_topology(PAPER)
    # planned for this bench's own requests (prompt + output tokens resident), so the capacity
    # model's residents per node are the ones the paged KV budgets really hold: no scaling by hand
    cost = CostModel(topo, FixedLengths(prompt_tokens, max_tokens).shape)
    placement = plan(topo, time_limit_s=plan_time_s, cost_model=cost)
    kv_scale = 1.0
    model = resolve_model(f"tiny-{topo.model.num_layers}")
    max_seq_len = max(64, -(-(prompt_tokens + max_tokens) // 16) * 16)
    # each worker's page pool holds what the scheduler may admit to it (its emulated GPU's budget
    # per layer held), capped by what the closed loop can have in flight
    per_layer = max(cost.kv_budget_token_layers(topo.node(n).gpu, e - s) // (e - s) for n, (s, e) in placement.ranges.items())
    kv_tokens = min(concurrency * max_seq_len, -(-per_layer // 16) * 16)
    cfg = ServeConfig(
        topo,
        placement,
        model,
        weights="random:0",
        max_seq_len=max_seq_len,
        emulation=EmulationSpec.for_topology(topo, time_scale, kv_scale, placement.workload),
        kv_tokens=kv_tokens,
        queue_limit=100_000,
        heartbeat_timeout_s=120.0,
    )  # 24 workers share this machine's cores
    started = time.perf_counter()
    with LocalDeployment(cfg, load_tokenizer(model)) as dep:
        dep.wait_ready(timeout_s=1800)
        ready_s = time.perf_counter() - started
        t0 = time.perf_counter()
        stamps = asyncio.run(closed_loop(dep.client_endpoint, concurrency, prompt_tokens, max_tokens, (warmup_s + window_s) * time_scale))
        stats = dep.coordinator.stats()
    lo, hi = t0 + warmup_s * time_scale, t0 + (warmup_s + window_s) * time_scale
    in_window = sum(lo <= s < hi for s in stamps)
    measured = in_window / window_s  # tokens per emulated second
    return {
        "max_flow_tokens_per_s": placement.objective_tokens_per_s,
        "measured_tokens_per_s": measured,
        "fraction_of_max_flow": measured / placement.objective_tokens_per_s,
        "time_scale": time_scale,
        "concurrency": concurrency,
        "window_emulated_s": window_s,
        "deploy_ready_s": ready_s,
        "workers": len(placement.ranges),
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "peak_queued": stats["peak_queued"],
        "kv_scale": kv_scale,
    }
