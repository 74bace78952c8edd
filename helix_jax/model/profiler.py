"""Measure per-layer latency of the local accelerator: the input of a measured cost model.

Owns `profile_device`: builds a middle stage of K layers of the model's true width (seeded
random weights, no embedding or head), runs the real `StageEngine` on prefill chunks of
several sizes and on decode batches of several sizes, and returns a dict in the
`helix-jax-profile/1` format (helix_jax.profiles). Sits at the very start of the data flow:
profile -> topology (`"profile": "file.json"`) -> cost model -> solver.
Imports jax, flax and numpy only, so it runs on bare GPU machines.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from helix_jax.errors import ConfigError
from helix_jax.model.batching import StepInput
from helix_jax.model.engine import StageEngine
from helix_jax.model.weights import random_stage_weights
from helix_jax.modelconfig import ModelConfig

log = logging.getLogger(__name__)

PROFILE_FORMAT = "helix-jax-profile/1"
KV_MEMORY_FRACTION = 0.9  # of the memory left after weights; the rest is activations/workspace


def device_memory_bytes() -> tuple[float, float]:
    """(total, free) bytes of the default device; host RAM for the CPU backend."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        total = float(stats["bytes_limit"])
        return total, total - float(stats.get("bytes_in_use", 0))
    total = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    free = total
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    free = float(line.split()[1]) * 1024
    except OSError:
        pass
    return total, free


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `fn` over `repeats` runs (after one untimed run). The machine
    may be shared: the median resists noise. Also used by helix_jax.model.bench_runtime."""
    fn()
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def prefill_requests(
    engine: StageEngine, request_ids: Sequence[str], run_start_layer: int, context_tokens: int, payload: Callable[[int], dict[str, Any]]
) -> None:
    """Add each of `request_ids` to `engine` and prefill `context_tokens` tokens of it in chunks
    of at most `engine.max_chunk_tokens`; `payload(n)` is the StepInput data of an n-token chunk
    ({"token_ids": ...} or {"hidden": ...}). Sets up the decode measurements here and in
    helix_jax.model.bench_runtime."""
    for rid in request_ids:
        engine.add_request(rid)
        for begin in range(0, context_tokens, engine.max_chunk_tokens):
            n = min(engine.max_chunk_tokens, context_tokens - begin)
            engine.step([StepInput(rid, run_start_layer, begin, **payload(n))])


def profile_device(
    config: ModelConfig,
    num_layers: int = 2,
    prefill_tokens: Sequence[int] = (16, 64, 256),
    decode_batches: Sequence[int] = (1, 2, 4, 8, 16, 32),
    context_tokens: int = 128,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure `num_layers` layers of `config`'s width; return the profile dict.

    Prefill point: one request's chunk of `tokens` tokens at position 0. Decode point: `batch`
    requests with `context_tokens` cached each, one token each. Times are per layer.
    `progress(label)` is called after each measured point.
    """
    if num_layers <= 0 or repeats <= 0 or context_tokens <= 0:
        raise ConfigError("profile needs layers > 0, repeats > 0 and context_tokens > 0")
    prefill_tokens, decode_batches = sorted(set(prefill_tokens)), sorted(set(decode_batches))
    shape = config.with_overrides(num_layers=num_layers + 2)  # a middle stage: no embedding, no head
    weights = random_stage_weights(shape, 1, num_layers + 1, seed=0)
    jax.block_until_ready(weights.state)
    total, free_after = device_memory_bytes()
    max_seq_len = max(prefill_tokens[-1], context_tokens + repeats + 2)
    engine = StageEngine(
        shape,
        1,
        num_layers + 1,
        weights,
        max_slots=decode_batches[-1],
        max_seq_len=max_seq_len,
        prefill_buckets=prefill_tokens,
        decode_buckets=decode_batches,
        prefill_batch_buckets=(1,),
    )
    engine.warmup()
    rng = np.random.default_rng(0)
    hidden_dtype = np.dtype(jax.numpy.dtype(config.dtype))

    def hidden(n: int) -> np.ndarray:
        return rng.standard_normal((n, config.hidden_size)).astype(hidden_dtype)

    prefill_points = []
    for tokens in prefill_tokens:
        chunk = hidden(tokens)

        def run_prefill() -> None:
            engine.add_request("p")
            engine.step([StepInput("p", 1, 0, hidden=chunk)])
            engine.release("p")

        seconds = median_seconds(run_prefill, repeats)
        prefill_points.append({"tokens": tokens, "seconds_per_layer": seconds / num_layers})
        if progress:
            progress(f"prefill {tokens} tokens")
    decode_points = []
    for batch in decode_batches:
        ids = [f"d{i}" for i in range(batch)]
        prefill_requests(engine, ids, 1, context_tokens, lambda n: {"hidden": hidden(n)})
        one = hidden(1)

        def run_decode() -> None:
            engine.step([StepInput(rid, 1, engine.tokens_cached(rid), hidden=one) for rid in ids])

        seconds = median_seconds(run_decode, repeats)
        for rid in ids:
            engine.release(rid)
        decode_points.append({"batch": batch, "context_tokens": context_tokens, "seconds_per_layer": seconds / num_layers})
        if progress:
            progress(f"decode batch {batch}")
    device = jax.devices()[0]
    kv_room = max(0.0, free_after * KV_MEMORY_FRACTION)
    log.info("profiled %s on %s (%d programs compiled)", config.name, device, engine.compile_count)
    return {
        "format": PROFILE_FORMAT,
        "device": device.device_kind if device.platform != "cpu" else "cpu",
        "model": config.to_dict(),
        "dtype": config.dtype,
        "layers_measured": num_layers,
        "memory_bytes_total": total,
        "memory_bytes_free_for_kv_per_layer_held": kv_room,
        "weight_bytes_per_layer": config.weight_bytes_per_layer,
        "prefill": prefill_points,
        "decode": decode_points,
    }
