"""CURVE benchmark (part of `make bench-serve`): what authenticating every ZeroMQ socket costs.

The tiny 3-worker cluster (topologies/cpu-tiny.json, partial inference on) deployed twice, with
CURVE keys and with plain TCP: deploy-to-ready seconds, one request's TPOT (its round trip
crosses every hop, so the difference is the per-round-trip cost of encryption), and decode
tokens/s of 16 concurrent greedy streams.

  python -m helix_jax.cli.curve_bench [--streams 16] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


def run(secure: bool, streams: int, max_tokens: int) -> dict:
    from helix_jax.cli.serve_cmds import serve_config
    from helix_jax.client import Client
    from helix_jax.runtime.deploy import LocalDeployment
    from helix_jax.topology import tiny_topology_path

    cfg, codec = serve_config(tiny_topology_path(), None, None, False, 1.0, "127.0.0.1", 0, streams * 128, 128,
                              10.0, secure=secure)
    cfg = dataclasses.replace(cfg, heartbeat_timeout_s=60.0)
    prompts = [[256] + [65 + (i + j) % 26 for j in range(15)] for i in range(streams)]
    began = time.perf_counter()
    with LocalDeployment(cfg, codec) as dep:
        dep.wait_ready(timeout_s=600)
        ready_s = time.perf_counter() - began
        keys = cfg.keys.client() if cfg.keys is not None else None
        with Client(dep.client_endpoint, timeout_s=600, keys=keys) as client:
            for _ in range(2):
                client.generate(prompts[0], max_tokens=max_tokens)
            singles = [client.generate(prompts[0], max_tokens=max_tokens) for _ in range(5)]
            start = time.perf_counter()
            with ThreadPoolExecutor(streams) as pool:
                batch = list(pool.map(lambda p: client.generate(p, max_tokens=max_tokens), prompts))
            wall = time.perf_counter() - start
    hops = statistics.mean(len(r.route) + 1 for r in singles)
    return {"ready_s": ready_s, "tpot_ms": statistics.median(r.timings.tpot_s for r in singles) * 1e3,
            "hops": hops, "tok_s": sum(len(r.ids) for r in batch) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    off = run(False, args.streams, args.max_tokens)
    on = run(True, args.streams, args.max_tokens)
    print(f"[curve] cpu-tiny, {on['hops']:.1f} hops per round trip, {args.streams} streams of {args.max_tokens} tokens")
    for label, r in (("plain TCP", off), ("CURVE", on)):
        print(f"  {label:9s}: ready in {r['ready_s']:.1f} s, 1-request TPOT {r['tpot_ms']:.2f} ms, "
              f"{args.streams} streams {r['tok_s']:.1f} tok/s")
    print(f"  CURVE costs {(on['tpot_ms'] - off['tpot_ms']) / on['hops']:.3f} ms per hop and "
          f"{1 - on['tok_s'] / off['tok_s']:.1%} of 16-stream throughput (target < 10%)")


if __name__ == "__main__":
    main()
