"""Bench: requests resident on one worker at equal KV memory, paged pool against max_seq_len slots.

Owns `resident_requests` and the `python -m helix_jax.model.bench_paged` entry point (`make
bench-paged`). Sits beside the runtime in the data flow: it drives the page allocator the
engine uses (`PagePool`, no jax) with Azure-conversation request lengths and counts the
requests the worker holds, reserving prompt + max_tokens up front exactly as the scheduler's
ledger does. The contiguous layout holds `kv_tokens // max_seq_len` requests whatever their
lengths; `max_seq_len` must hold the longest request (2,048 prompt + 1,000 output tokens).
"""

from __future__ import annotations

import argparse
import random
import statistics

from helix_jax.model.paged_cache import PagePool, pages_for
from helix_jax.workload import MAX_OUTPUT_TOKENS, MAX_PROMPT_TOKENS, AzureConversationLengths

SEQ_ROUND = 1024


def resident_requests(kv_tokens: int, num_layers: int, page_size: int, trials: int, seed: int) -> list[int]:
    """Per trial: FIFO-admit Azure-like requests into an empty pool of `kv_tokens` tokens per
    layer (each reserving pages for prompt + output on every layer) until the next one does
    not fit; the count admitted."""
    lengths = AzureConversationLengths()
    rng = random.Random(seed)
    counts = []
    for _ in range(trials):
        pool = PagePool(num_layers, kv_tokens // page_size, page_size)
        held = 0
        while True:
            prompt, output = lengths.sample(rng)
            try:
                pool.open(held, prompt + output)
            except Exception:  # OverloadedError: the pool cannot promise the pages
                break
            held += 1
        counts.append(held)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kv-tokens", type=int, default=131_072, help="KV budget per worker, tokens per layer")
    parser.add_argument("--layers", type=int, default=8, help="layers the worker holds")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    longest = MAX_PROMPT_TOKENS + MAX_OUTPUT_TOKENS
    max_seq_len = -(-longest // SEQ_ROUND) * SEQ_ROUND
    slots = args.kv_tokens // max_seq_len
    counts = resident_requests(args.kv_tokens, args.layers, args.page_size, args.trials, args.seed)
    rng, lengths = random.Random(args.seed + 1), AzureConversationLengths()
    draws = [sum(lengths.sample(rng)) for _ in range(100_000)]
    mean_tokens = statistics.fmean(draws)
    mean_pages = statistics.fmean(pages_for(t, args.page_size) for t in draws)
    print(f"KV memory per worker: {args.kv_tokens} tokens x {args.layers} layers (equal for both layouts)")
    print(
        f"Azure-like lengths: mean prompt + output {mean_tokens:.0f} tokens, "
        f"{mean_pages * args.page_size:.0f} page-rounded (page {args.page_size})"
    )
    print(f"slots (max_seq_len {max_seq_len}): {slots} requests resident")
    print(
        f"paged, reserved up front: mean {statistics.fmean(counts):.1f}, min {min(counts)}, "
        f"max {max(counts)} requests resident over {args.trials} fills"
    )
    print(f"paged / slots: {statistics.fmean(counts) / slots:.2f}x (min {min(counts) / slots:.2f}x)")


if __name__ == "__main__":
    main()
