"""The GPU checks in one prepared run, for a machine lent with an accelerator (`make bench-gpu`).

Owns `main` (`python -m helix_jax.model.gpu_checks --out DIR`). Sits beside the runtime, like
bench_runtime.py: it imports jax, flax, numpy and rich only (no pydantic, pyzmq or solver), so it
runs from a plain checkout with `PYTHONPATH=.` on a machine that has JAX on CUDA and nothing else
of ours. In order, each step's figures printed and written to DIR as soon as it ends, so a run
cut short keeps what it measured:

1. `profile.json`: `helix-jax profile`'s measurement (`profile_device`) of LLaMA-2-70B-shaped
   layers in the chosen dtype, the input of a measured cost model (a topology's `"profile"`);
2. `decode.jsonl`: decode steps of the same layers against the memory-bandwidth floor, for each
   KV variant: the paged pool read by the gather, the paged pool read by JAX's Pallas
   paged-attention kernel, and the contiguous slots (issue 18: paged within 1.2x of contiguous).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax

from helix_jax.model.bench_runtime import bench_decode, kv_variant, measure_bandwidth_bytes_per_s
from helix_jax.model.profiler import profile_device
from helix_jax.modelconfig import PRESETS

KV_VARIANTS = ("paged-gather", "paged-pallas", "contiguous")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for profile.json and decode.jsonl")
    parser.add_argument("--shape", default="llama-2-70b", help="preset whose true-width layers are measured")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--prefill-tokens", default="16,64,256,1024", help="prompt sizes of the profile")
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--kv", default=",".join(KV_VARIANTS), help="KV variants of the decode rows")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument(
        "--bandwidth-mib", type=int, default=1024, help="size of the copy that measures memory bandwidth (the decode rows' floor)"
    )
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(width=150)
    args.out.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    config = PRESETS[args.shape].with_overrides(dtype=args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    console.print(f"device: {device.device_kind} ({device.platform}); {config.name} layers in {config.dtype}")
    if not args.skip_profile:
        begin = time.perf_counter()
        profile = profile_device(
            config, args.layers, [int(t) for t in args.prefill_tokens.split(",")], batches, args.context_tokens, args.steps
        )
        (args.out / "profile.json").write_text(json.dumps(profile, indent=1))
        decode = ", ".join(f"{p['batch']}: {p['seconds_per_layer'] * 1e3:.3f}" for p in profile["decode"])
        prefill = ", ".join(f"{p['tokens']}: {p['seconds_per_layer'] * 1e3:.3f}" for p in profile["prefill"])
        console.print(f"profile ({time.perf_counter() - begin:.0f} s): ms per layer, decode by batch {decode}; prefill by tokens {prefill}")
    bandwidth = measure_bandwidth_bytes_per_s(args.bandwidth_mib << 20)
    console.print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    shape = config.with_overrides(num_layers=args.layers + 2)  # a middle stage: no embedding, no head
    for variant in args.kv.split(","):
        rows = bench_decode(shape, 1, args.layers + 1, batches, args.context_tokens, args.steps, bandwidth, *kv_variant(variant))
        with (args.out / "decode.jsonl").open("a") as f:
            for r in rows:
                f.write(json.dumps({**dataclasses.asdict(r), "bandwidth_bytes_per_s": bandwidth}) + "\n")
        steps = ", ".join(f"{r.batch}: {r.step_ms:.2f} ms ({r.vs_floor:.2f}x floor)" for r in rows)
        console.print(f"decode {rows[0].kv}: {steps}")


if __name__ == "__main__":
    main()
