"""`make bench-long-prompt`: decode latency while a 2000-token prompt arrives (issue 18).

The shipped default deployment (topologies/cpu-small.json: SmolLM2-135M-Instruct on 3 worker
processes, paged KV, chunked prefill by the cost model's per-step prompt budget) runs
`--streams` decoding requests; once they stream, a `--long-tokens` prompt arrives. Every
decoder's token gaps are split into those before the long prompt arrived and those while it
prefills (until its first token). Chunked prefill is what keeps the second p99 near the first:
without it the whole prompt would run in one step of every stage, and every decoder would
wait for it.

Prints one JSON object (also to `--out`): TPOT p50/p99 before and during, the long prompt's
TTFT, the chunks it ran in (prompt budget per step) and the machine's figures.

Run as `python -m helix_jax.cli.long_prompt_bench` (a script, not library code).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path

from helix_jax.client import Client


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=160)
    parser.add_argument("--long-tokens", type=int, default=2000)
    parser.add_argument("--warmup-tokens", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from helix_jax.cli.serve_cmds import serve_config
    from helix_jax.runtime.deploy import LocalDeployment

    max_seq_len = args.long_tokens + 64
    kv_tokens = args.streams * 256 + max_seq_len  # per worker: every decoder plus the long prompt
    # a step over a 2k context takes seconds on a small CPU: heartbeats come between steps
    cfg, tokenizer = serve_config(None, None, None, False, 1.0, "127.0.0.1", 0, kv_tokens, max_seq_len, 10.0, heartbeat_timeout_s=120.0)
    rng = random.Random(0)
    long_prompt = [rng.randrange(200, 40000) for _ in range(args.long_tokens)]
    arrivals: list[list[float]] = [[] for _ in range(args.streams)]
    long_sent = threading.Event()
    marks: dict[str, float] = {}

    with LocalDeployment(cfg, tokenizer) as dep:
        dep.wait_ready()
        with Client(dep.client_endpoint, timeout_s=600) as client:
            client.generate("Warm up the buckets.", max_tokens=4)
            client.generate(long_prompt[:300], max_tokens=1)  # compiles the chunk shapes once

            def decoder(i: int) -> None:
                for _ in client.stream(
                    f"Tell me a long story about GPU number {i}.", max_tokens=args.decode_tokens, temperature=0.7, seed=i
                ):
                    arrivals[i].append(time.monotonic())
                    if i == 0 and len(arrivals[0]) == args.warmup_tokens:
                        long_sent.set()

            threads = [threading.Thread(target=decoder, args=(i,)) for i in range(args.streams)]
            for t in threads:
                t.start()
            long_sent.wait(600)
            marks["sent"] = time.monotonic()
            result = client.generate(long_prompt, max_tokens=1)
            marks["first_token"] = time.monotonic()
            for t in threads:
                t.join(600)
        stats = dep.coordinator.serving_stats() if dep.coordinator else {}

    before, during = [], []
    for times in arrivals:
        for a, b in zip(times, times[1:]):
            if b <= marks["sent"]:
                before.append(b - a)
            elif a >= marks["sent"] and b <= marks["first_token"]:
                during.append(b - a)
            elif a < marks["first_token"] and b > marks["sent"]:
                during.append(b - a)  # a gap that overlaps the prefill counts against it
    budgets = {n: s.get("step_s") for n, s in stats.get("nodes", {}).items()}
    out = {
        "streams": args.streams,
        "long_prompt_tokens": args.long_tokens,
        "tpot_before_ms": {"p50": 1e3 * statistics.median(before), "p99": 1e3 * percentile(before, 0.99), "n": len(before)},
        "tpot_during_ms": {
            "p50": 1e3 * statistics.median(during) if during else None,
            "p99": 1e3 * percentile(during, 0.99) if during else None,
            "n": len(during),
        },
        "long_prompt_ttft_s": marks["first_token"] - marks["sent"],
        "long_prompt_server_ttft_s": result.timings.ttft_s,
        "node_step_s": budgets,
    }
    print(json.dumps(out, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
