"""CURVE benchmark (part of `make bench-serve`): what authenticating every ZeroMQ socket costs.

The tiny 3-worker cluster (topologies/cpu-tiny.json, partial inference on) deployed twice by
`serve_bench.bench_cpu_small`, with plain TCP and with CURVE keys: deploy-to-ready seconds, one
request's TPOT (its round trip crosses every hop, so the difference is the per-round-trip cost
of encryption) and decode tokens/s of 16 concurrent greedy streams.

  python -m helix_jax.cli.curve_bench [--streams 16] [--max-tokens 32]
"""

from __future__ import annotations

import argparse

from helix_jax.cli.serve_bench import bench_cpu_small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    off, on = (bench_cpu_small(args.streams, args.max_tokens, secure=secure, local=False) for secure in (False, True))
    print(f"[curve] cpu-tiny, {on['route_hops']:.1f} hops per round trip, {args.streams} streams of "
          f"{args.max_tokens} tokens")
    for label, r in (("plain TCP", off), ("CURVE", on)):
        d = r["deployed"]
        print(f"  {label:9s}: ready in {r['ready_s']:.1f} s, 1-request TPOT {d['tpot_ms']:.2f} ms, "
              f"{args.streams} streams {d['batch_tokens_per_s']:.1f} tok/s")
    cost_ms = (on["deployed"]["tpot_ms"] - off["deployed"]["tpot_ms"]) / on["route_hops"]
    share = 1 - on["deployed"]["batch_tokens_per_s"] / off["deployed"]["batch_tokens_per_s"]
    print(f"  CURVE costs {cost_ms:.3f} ms per hop and {share:.1%} of {args.streams}-stream throughput "
          "(target < 10%)")


if __name__ == "__main__":
    main()
