"""Runtime benchmark (`make bench-runtime`): decode throughput of StageEngine next to the
memory-bandwidth floor.

For each model shape and decode batch bucket it prefills `batch` requests to a context,
then times decode steps of the real engine (host bookkeeping, padding, transfers included;
median over steps)
and reports tokens/s, time per layer per step, and the floor: (weight bytes + KV bytes read
per step) / measured memory bandwidth, where the bandwidth comes from a large array copy.
Decode is memory bound, so step time / floor says how close the runtime is to the machine.

  python -m helix_jax.model.bench_runtime                     # tiny-8 model + one LLaMA-2-7B layer
  python -m helix_jax.model.bench_runtime --shape llama-2-70b --dtype bfloat16 --layers 4 --batches 1,8,32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from helix_jax.model.batching import StepInput
from helix_jax.model.engine import StageEngine
from helix_jax.model.profiler import median_seconds, prefill_requests
from helix_jax.model.weights import random_stage_weights
from helix_jax.modelconfig import PRESETS, ModelConfig


def measure_bandwidth_bytes_per_s(size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Memory bandwidth from copying a large array: (bytes read + bytes written) / best time.

    On the CPU backend the copy goes into a preallocated numpy array (a fresh output would
    measure page faults, not bandwidth); on accelerators a jitted copy runs on the device.
    """
    n = size_bytes // 4
    if jax.devices()[0].platform == "cpu":
        src, dst = np.ones((n,), np.float32), np.zeros((n,), np.float32)
        copy = lambda: np.copyto(dst, src)  # noqa: E731
    else:
        x = jnp.ones((n,), jnp.float32)
        jitted = jax.jit(lambda a: a + 1.0)
        copy = lambda: jitted(x).block_until_ready()  # noqa: E731
    copy()
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        copy()
        best = min(best, time.perf_counter() - begin)
    return 2 * n * 4 / best


@dataclasses.dataclass(frozen=True)
class DecodeRow:
    model: str
    layers: int
    dtype: str
    batch: int
    context_tokens: int
    step_ms: float
    ms_per_layer: float
    tokens_per_s: float
    floor_ms: float
    gflop_per_s: float  # matmul FLOPs of the layers (head excluded) per second achieved
    kv: str  # KV layout / decode attention backend (StageEngine.attention)

    @property
    def vs_floor(self) -> float:
        return self.step_ms / self.floor_ms


def kv_variant(text: str) -> tuple[str, str]:
    """A `--kv` variant, "LAYOUT[-ATTENTION]" (paged, paged-gather, paged-pallas, contiguous), as
    StageEngine's (kv_layout, attention); no attention given: "auto"."""
    layout, _, attention = text.partition("-")
    return layout, attention or "auto"


def bench_decode(
    config: ModelConfig,
    start: int,
    end: int,
    batches: list[int],
    context_tokens: int,
    steps: int,
    bandwidth_bytes_per_s: float,
    kv_layout: str = "paged",
    attention: str = "auto",
) -> list[DecodeRow]:
    """Decode-step timings of the stage [start, end) of `config` (random weights), with the KV
    cache in `kv_layout` read by `attention` (StageEngine's options)."""
    weights = random_stage_weights(config, start, end, seed=0)
    layers = end - start
    max_seq_len = context_tokens + steps + 2
    engine = StageEngine(
        config,
        start,
        end,
        weights,
        max_slots=max(batches),
        max_seq_len=max_seq_len,
        prefill_buckets=(min(64, context_tokens),),
        prefill_batch_buckets=(1,),
        decode_buckets=batches,
        kv_layout=kv_layout,
        attention=attention,
    )
    engine.warmup()
    compiled = engine.compile_count  # 0 when an identical stage compiled earlier in this process
    rng = np.random.default_rng(0)
    dtype = np.dtype(jnp.dtype(config.dtype))

    def payload(n: int) -> dict:
        if start == 0:
            return {"token_ids": rng.integers(0, min(256, config.vocab_size), n).astype(np.int32)}
        return {"hidden": rng.standard_normal((n, config.hidden_size)).astype(dtype)}

    rows = []
    head_bytes = weights.weight_bytes - layers * config.weight_bytes_per_layer  # embedding / LM head
    for batch in batches:
        ids = [f"r{i}" for i in range(batch)]
        prefill_requests(engine, ids, start, context_tokens, payload)
        one = payload(1)

        def run_decode() -> None:
            engine.step([StepInput(rid, start, engine.tokens_cached(rid), **one) for rid in ids])

        step_s = median_seconds(run_decode, steps - 1)  # one untimed step, then steps - 1 timed
        for rid in ids:
            engine.release(rid)
        kv_read = batch * max_seq_len * config.kv_bytes_per_token_per_layer * layers  # attention window
        floor_s = (layers * config.weight_bytes_per_layer + head_bytes + kv_read) / bandwidth_bytes_per_s
        flops = batch * layers * config.flops_per_token_per_layer
        rows.append(
            DecodeRow(
                config.name,
                layers,
                config.dtype,
                batch,
                context_tokens,
                step_s * 1e3,
                step_s * 1e3 / layers,
                batch / step_s,
                floor_s * 1e3,
                flops / step_s / 1e9,
                kv_layout if kv_layout == "contiguous" else f"paged/{engine.attention}",
            )
        )
    if engine.compile_count != compiled:
        raise RuntimeError(f"steady-state decode recompiled ({engine.compile_count - compiled} programs after warmup)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-2-7b", help="preset whose true-width layer is measured")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--layers", type=int, default=1, help="wide layers in the measured stage")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--context-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument(
        "--kv",
        default="paged",
        help="comma list of KV variants of the wide rows: paged (auto attention), paged-gather, paged-pallas, contiguous",
    )
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines too")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    bandwidth = measure_bandwidth_bytes_per_s()
    device = jax.devices()[0]
    console.print(f"device: {device.device_kind} ({device.platform}); copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[DecodeRow] = []
    if not args.skip_tiny:
        tiny = PRESETS["tiny-8"]
        rows += bench_decode(tiny, 0, tiny.num_layers, [1, 2, 4, 8, 16, 32], 64, 20, bandwidth)
    wide = PRESETS[args.shape].with_overrides(num_layers=args.layers + 2, dtype=args.dtype)
    for variant in args.kv.split(","):
        rows += bench_decode(wide, 1, args.layers + 1, batches, args.context_tokens, args.steps, bandwidth, *kv_variant(variant))
    table = Table(title="decode steps of StageEngine")
    for column in (
        "model",
        "layers",
        "dtype",
        "kv",
        "batch",
        "context",
        "step ms",
        "ms/layer",
        "tokens/s",
        "floor ms",
        "step/floor",
        "GFLOP/s",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r.model,
            str(r.layers),
            r.dtype,
            r.kv,
            str(r.batch),
            str(r.context_tokens),
            f"{r.step_ms:.2f}",
            f"{r.ms_per_layer:.3f}",
            f"{r.tokens_per_s:.0f}",
            f"{r.floor_ms:.3f}",
            f"{r.vs_floor:.1f}x",
            f"{r.gflop_per_s:.1f}",
        )
    console.print(table)
    if args.json:
        for r in rows:
            print(json.dumps({**dataclasses.asdict(r), "bandwidth_bytes_per_s": bandwidth}))


if __name__ == "__main__":
    main()
