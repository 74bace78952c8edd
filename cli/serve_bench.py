"""Serving benchmark (`make bench-serve`): real deployments measured through the client.

1. Small CPU topology (tiny-8, 3 workers, planned placement): one request and a concurrent
   batch through the deployment, against the same model run in one process by one
   StageEngine (same weights, same buckets). Reports decode tokens/s, TTFT, TPOT, and the
   pipeline overhead per hop in ms ((TPOT deployed - TPOT local) / hops per round trip).
2. Failover on the small CPU topology: concurrent long requests, one worker process killed
   (SIGKILL) while they stream. Reports whether every request finished, how many were resumed
   on another route, the longest pause any client saw between two tokens, and the deployment's
   decode tokens/s before and after the kill (serve_bench_failover.py).
3. `--emulate` on the paper's 24-node one-region LLaMA-2-70B cluster: 24 worker processes
   compute tiny-80 while pacing every step and transfer to A100/L4/T4 speed x time scale. A
   closed loop keeps the cluster full; decode tokens/s over a window after warm-up (scaled
   back by the time scale) is compared with the placement's max-flow (serve_bench_emulate.py).

4. HTTP API on the small CPU topology: the same deployment measured by `helix_jax.bench.live`
   (same workload, same metrics) through the ZeroMQ client and through its OpenAI-compatible
   front end (streamed /v1/completions): the p50 TPOT of one stream at a time on each path and
   their difference (the API's per-token overhead), then decode tokens/s at 64 concurrent
   streams on each path.

Run: `python -m helix_jax.cli.serve_bench [--skip-small] [--skip-failover] [--skip-emulate]
[--skip-http] [--time-scale 5] [--concurrency 900]`.
The planner lives in solver/, so this script sits in the CLI layer.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from helix_jax.cli.serve_bench_emulate import bench_emulated
from helix_jax.cli.serve_bench_failover import bench_failover, print_failover
from helix_jax.client import Client
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.runtime.deploy import LocalDeployment
from helix_jax.topology import load_topology, tiny_topology_path


def local_baseline(config, prompts: list[list[int]], max_tokens: int, max_seq_len: int) -> dict:
    """The whole model in this process: one StageEngine, prefill each prompt, batched decode."""
    from helix_jax.model import SamplingParams, StageEngine, StepInput, random_stage_weights

    n = len(prompts)
    weights = random_stage_weights(config, 0, config.num_layers, 0)
    engine = StageEngine(
        config,
        0,
        config.num_layers,
        weights,
        max_slots=n,
        max_seq_len=max_seq_len,
        prefill_buckets=(32, max_seq_len),
        prefill_batch_buckets=(1,),
        decode_buckets=tuple(b for b in (1, 2, 4, 8, 16, 32) if b < n) + (n,),
    )
    engine.warmup()

    def run(batch: list[list[int]]) -> tuple[float, list[float], int, float]:
        start = time.perf_counter()
        tokens, ttfts = {}, []
        for i, ids in enumerate(batch):
            engine.add_request(i, SamplingParams())
            (out,) = engine.step([StepInput(i, 0, 0, token_ids=np.asarray(ids, np.int32))])
            tokens[i] = [out.next_token]
            ttfts.append(time.perf_counter() - start)
        decode_start = time.perf_counter()
        for _ in range(max_tokens - 1):
            items = [StepInput(i, 0, len(batch[i]) + len(t) - 1, token_ids=np.asarray([t[-1]], np.int32)) for i, t in tokens.items()]
            for item, out in zip(items, engine.step(items)):
                tokens[item.request_id].append(out.next_token)
        end = time.perf_counter()
        for i in tokens:
            engine.release(i)
        total = sum(len(t) for t in tokens.values())
        return end - start, ttfts, total, (end - decode_start) / (max_tokens - 1)

    run(prompts[:1])  # first calls touch cold paths
    singles = [run(prompts[:1]) for _ in range(5)]
    wall, ttfts, total, _ = run(prompts)
    return {
        "ttft_ms": statistics.median(s[1][0] for s in singles) * 1e3,
        "tpot_ms": statistics.median(s[3] for s in singles) * 1e3,
        "batch_tokens_per_s": total / wall,
        "batch_ttft_ms": statistics.mean(ttfts) * 1e3,
    }


def bench_cpu_small(requests: int, max_tokens: int, secure: bool = False, local: bool = True) -> dict:
    """cpu-tiny, planned: one request at a time and `requests` at once through the deployment
    (with CURVE keys when `secure`), against the whole model in this process (when `local`)."""
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.runtime.security import DeploymentKeys
    from helix_jax.solver.plan import plan

    topo = load_topology(tiny_topology_path())
    rng = random.Random(0)
    prompts = [[256] + [rng.randrange(256) for _ in range(15)] for _ in range(requests)]
    max_seq_len = 64
    baseline = local_baseline(topo.model, prompts, max_tokens, max_seq_len) if local else None
    placement = plan(topo, time_limit_s=10)
    keys = DeploymentKeys.generate(placement.ranges) if secure else None
    cfg = ServeConfig(topo, placement, topo.model, weights="random:0", max_seq_len=max_seq_len, kv_tokens=requests * max_seq_len, keys=keys)
    began = time.perf_counter()
    with LocalDeployment(cfg, load_tokenizer(topo.model)) as dep:
        dep.wait_ready()
        ready_s = time.perf_counter() - began
        with Client(dep.client_endpoint, keys=keys.client() if keys is not None else None) as client:
            for _ in range(2):  # first requests touch cold paths
                client.generate(prompts[0], max_tokens=max_tokens)
            singles = [client.generate(prompts[0], max_tokens=max_tokens) for _ in range(5)]
            start = time.perf_counter()
            with ThreadPoolExecutor(requests) as pool:
                batch = list(pool.map(lambda p: client.generate(p, max_tokens=max_tokens), prompts))
            wall = time.perf_counter() - start
    hops = statistics.mean(len(r.route) + 1 for r in singles)  # coordinator -> hops -> coordinator
    tpot = statistics.median(r.timings.tpot_s for r in singles) * 1e3
    return {
        "placement": {n: list(r) for n, r in placement.ranges.items()},
        "route_hops": hops,
        "local": baseline,
        "ready_s": ready_s,
        "deployed": {
            "ttft_ms": statistics.median(r.timings.ttft_s for r in singles) * 1e3,
            "tpot_ms": tpot,
            "batch_tokens_per_s": sum(len(r.ids) for r in batch) / wall,
            "batch_ttft_ms": statistics.mean(r.timings.ttft_s for r in batch) * 1e3,
        },
        "overhead_per_hop_ms": (tpot - baseline["tpot_ms"]) / hops if baseline else None,
        "requests": requests,
        "max_tokens": max_tokens,
    }


def bench_http(duration_s: float, warmup_s: float, streams: int, prompt_tokens: int, max_tokens: int) -> dict:
    """cpu-tiny, planned: `helix_jax.bench.live` through the ZeroMQ client and through the HTTP
    front end of the same deployment, one stream at a time and `streams` at once."""
    from helix_jax.bench.live import LiveConfig, run_live_bench
    from helix_jax.http import Backend, HttpServer, bind_socket, create_app
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.solver.plan import plan
    from helix_jax.workload import length_sampler

    topo = load_topology(tiny_topology_path())
    max_seq_len = prompt_tokens + max_tokens
    placement = plan(topo, time_limit_s=10)
    cfg = ServeConfig(topo, placement, topo.model, weights="random:0", max_seq_len=max_seq_len, kv_tokens=streams * max_seq_len)
    lengths = length_sampler(None, prompt_tokens, max_tokens)
    out: dict = {"streams": streams, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "duration_s": duration_s}
    tokenizer = load_tokenizer(topo.model)
    with LocalDeployment(cfg, tokenizer) as dep:
        dep.wait_ready()
        app = create_app(Backend(dep.client_endpoint, tokenizer))
        with HttpServer(app, bind_socket("127.0.0.1", 0)) as front:
            with Client(dep.client_endpoint) as client:  # first requests touch cold paths
                client.generate([256] * prompt_tokens, max_tokens=max_tokens)
            endpoints = {"zmq": dep.client_endpoint, "http": front.url}
            for concurrency in (1, streams):
                for path, endpoint in endpoints.items():
                    config = LiveConfig(duration_s=duration_s, warmup_s=warmup_s, concurrency=concurrency, seed=3)
                    m = run_live_bench(endpoint, lengths, config).metrics
                    out[f"{path}_c{concurrency}"] = {
                        "tpot_p50_ms": m.tpot.p50_ms,
                        "ttft_p50_ms": m.ttft.p50_ms,
                        "decode_tokens_per_s": m.decode_tokens_per_s,
                        "completed": m.completed,
                    }
    out["tpot_overhead_p50_ms"] = out["http_c1"]["tpot_p50_ms"] - out["zmq_c1"]["tpot_p50_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-emulate", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--http-seconds", type=float, default=20.0, help="seconds per HTTP-vs-ZeroMQ run")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--time-scale", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=900)
    parser.add_argument("--warmup", type=float, default=15.0, help="emulated seconds before the window")
    parser.add_argument("--window", type=float, default=20.0, help="emulated seconds measured")
    parser.add_argument("--plan-time", type=float, default=10.0)
    parser.add_argument("--emulate-prompt-tokens", type=int, default=33, help="prompt tokens of every emulated request")
    parser.add_argument("--emulate-max-tokens", type=int, default=10, help="output tokens of every emulated request")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.skip_small:
        r = bench_cpu_small(args.requests, args.max_tokens)
        print(f"[cpu-tiny] placement {r['placement']}, {r['route_hops']:.1f} hops per round trip")
        for label in ("local", "deployed"):
            x = r[label]
            print(
                f"[cpu-tiny] {label:8s}: 1 request TTFT {x['ttft_ms']:.1f} ms, TPOT {x['tpot_ms']:.2f} ms; "
                f"{r['requests']} concurrent: {x['batch_tokens_per_s']:.0f} tok/s, mean TTFT {x['batch_ttft_ms']:.1f} ms"
            )
        print(f"[cpu-tiny] pipeline overhead per hop: {r['overhead_per_hop_ms']:.2f} ms")
    if not args.skip_failover:
        print_failover(bench_failover(16, 200, 0.5))
    if not args.skip_http:
        r = bench_http(args.http_seconds, min(5.0, args.http_seconds / 4), 64, 16, 32)
        for c in (1, r["streams"]):
            z, h = r[f"zmq_c{c}"], r[f"http_c{c}"]
            print(
                f"[http] cpu-tiny, {c} stream(s), prompt {r['prompt_tokens']}, output {r['max_tokens']}: "
                f"ZeroMQ TPOT p50 {z['tpot_p50_ms']:.2f} ms, {z['decode_tokens_per_s']:.0f} tok/s; "
                f"HTTP TPOT p50 {h['tpot_p50_ms']:.2f} ms, {h['decode_tokens_per_s']:.0f} tok/s"
            )
        print(f"[http] per-token overhead of the API (p50 TPOT, HTTP - ZeroMQ): {r['tpot_overhead_p50_ms']:.3f} ms")
    if not args.skip_emulate:
        r = bench_emulated(
            args.time_scale, args.concurrency, args.warmup, args.window, args.emulate_prompt_tokens, args.emulate_max_tokens, args.plan_time
        )
        print(
            f"[emulate] single-region-24-llama2-70b on tiny-80, {r['workers']} workers, time scale "
            f"{r['time_scale']:g}, {r['concurrency']} requests in flight (prompt {r['prompt_tokens']}, "
            f"output {r['max_tokens']}, KV budgets x{r['kv_scale']:.3f}); ready after {r['deploy_ready_s']:.0f} s"
        )
        print(
            f"[emulate] decode {r['measured_tokens_per_s']:.1f} tok/s over {r['window_emulated_s']:g} emulated s "
            f"= {100 * r['fraction_of_max_flow']:.1f}% of the max-flow {r['max_flow_tokens_per_s']:.1f} tok/s"
        )


if __name__ == "__main__":
    main()
