"""StageEngine: the compute half of a worker, for one layer range on one device.

Owns the stage's weights (traced arguments), its KV cache (an explicit, donated pytree:
contiguous slots or a paged pool, `kv_layout`), slot and page bookkeeping for the requests it
holds, and the bucketed step (programs in step_program.py). Sits in the
runtime step of the data flow: the worker loop (helix_jax.runtime) receives StepInputs from
the previous hop, calls `step`, and forwards the StepOutputs.

One `step(items)`:
  1. checks every item (known request, its fixed entry layer, next position, shapes) and,
     paged, takes the pages its new tokens need (all or none);
  2. splits items into decode-shaped work (1 token) and prefill chunks (> 1 token);
  3. pads each group to a (rows, tokens, context) bucket compiled at `warmup()`;
  4. runs the jitted stage forward (partial inference via per-row entry layers), which
     writes the new tokens' KV into the request's slot or pages and, on the last stage, samples;
  5. returns one StepOutput per item, in input order.
A steady mix of requests never recompiles: `compile_count` counts traces and tests pin it.
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from helix_jax.errors import ConfigError, OverloadedError
from helix_jax.model.batching import (
    PaddedBatch,
    StepInput,
    StepOutput,
    check_step,
    normalize_buckets,
    pad_batch,
    pick_bucket,
)
from helix_jax.model.compile_cache import enable_compile_cache
from helix_jax.model.engine_capacity import KVCapacity
from helix_jax.model.page_pool import PagePool, page_table_array, pages_for
from helix_jax.model.paged_cache import ATTENTION_BACKENDS
from helix_jax.model.sampling import SamplingParams
from helix_jax.model.stage import KVCache, init_kv_cache, init_paged_kv_cache, kv_cache_bytes
from helix_jax.model.step_program import CALLER, default_compiler_options, slots_for_kv_budget, step_program
from helix_jax.model.weights import StageWeights, check_range
from helix_jax.modelconfig import ModelConfig

log = logging.getLogger(__name__)

DEFAULT_PREFILL_BUCKETS = (16, 64, 256)
DEFAULT_PREFILL_BATCH_BUCKETS = (1, 4)
DEFAULT_DECODE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
KV_LAYOUTS = ("contiguous", "paged")
DEFAULT_KV_LAYOUT = "paged"
DEFAULT_PAGE_SIZE = 16


class _Request:
    __slots__ = ("slot", "sampling", "run_start_layer", "next_position")

    def __init__(self, slot: int, sampling: SamplingParams):
        self.slot, self.sampling = slot, sampling
        self.run_start_layer: int | None = None
        self.next_position = 0


class StageEngine(KVCapacity):
    """Runs layers [start_layer, end_layer) of `config` with continuous batching.

    kv_layout "contiguous": max_slots x max_seq_len is the KV cache, a request occupies one
    slot from `add_request` to `release` and may hold up to max_seq_len tokens. kv_layout
    "paged" (paged_cache.py): a pool of `num_pages` pages of `page_size` tokens per layer
    (default: as many tokens as the contiguous cache), allocated as tokens arrive and freed by
    `release`; max_slots then only caps the requests held at once. Buckets: decode_buckets are row counts
    of 1-token work; prefill_buckets are token counts per chunk (the largest is the longest
    chunk accepted, `max_chunk_tokens`) and prefill_batch_buckets row counts of chunk calls;
    context_buckets are attention windows (default: max_seq_len only). return_logits: the last
    stage also returns each item's last-position logits (tests, debugging). compiler_options:
    XLA options for the step programs (None: `default_compiler_options`, XLA's quickest level
    for narrow models on the CPU). attention: how paged decode steps read their pages, "gather" or
    "pallas" (JAX's Pallas paged-attention kernel, paged_cache.py); "auto" takes "pallas" on a
    GPU and falls back to "gather", with a warning, if the kernel does not compile there.
    Not thread-safe: one thread drives an engine.
    """

    def __init__(
        self,
        config: ModelConfig,
        start_layer: int,
        end_layer: int,
        weights: StageWeights,
        max_slots: int,
        max_seq_len: int,
        prefill_buckets: Sequence[int] = DEFAULT_PREFILL_BUCKETS,
        decode_buckets: Sequence[int] = DEFAULT_DECODE_BUCKETS,
        prefill_batch_buckets: Sequence[int] = DEFAULT_PREFILL_BATCH_BUCKETS,
        context_buckets: Sequence[int] | None = None,
        return_logits: bool = False,
        compiler_options: dict[str, Any] | None = None,
        kv_layout: str = DEFAULT_KV_LAYOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
        num_pages: int | None = None,
        attention: str = "auto",
    ):
        check_range(config, start_layer, end_layer)
        enable_compile_cache()  # before this process's first compile
        if (weights.config, weights.start_layer, weights.end_layer) != (config, start_layer, end_layer):
            raise ConfigError(
                f"weights hold layers [{weights.start_layer}, {weights.end_layer}) of "
                f"{weights.config.name!r}, the engine was asked for [{start_layer}, "
                f"{end_layer}) of {config.name!r}"
            )
        if max_slots <= 0 or max_seq_len <= 0:
            raise ConfigError(f"max_slots and max_seq_len must be positive, got {max_slots}, {max_seq_len}")
        self.config, self.start_layer, self.end_layer = config, start_layer, end_layer
        self.max_slots, self.max_seq_len = max_slots, max_seq_len
        self.is_first, self.is_last = start_layer == 0, end_layer == config.num_layers
        self.return_logits = return_logits
        self.decode_buckets = normalize_buckets("decode_buckets", decode_buckets, max_slots)
        self.prefill_buckets = normalize_buckets("prefill_buckets", prefill_buckets, max_seq_len)
        self.prefill_batch_buckets = normalize_buckets("prefill_batch_buckets", prefill_batch_buckets, max_slots)
        self.context_buckets = normalize_buckets("context_buckets", context_buckets or (max_seq_len,), max_seq_len)
        if self.context_buckets[-1] < max_seq_len:
            self.context_buckets += (max_seq_len,)
        if kv_layout not in KV_LAYOUTS:
            raise ConfigError(f"kv_layout must be one of {', '.join(KV_LAYOUTS)}, got {kv_layout!r}")
        self.kv_layout = kv_layout
        self.page_size = page_size if kv_layout == "paged" else 0
        self.pool: PagePool | None = None
        if self.page_size:  # windows are whole pages: a bucket of P pages reads P x page_size
            pages = num_pages if num_pages is not None else max_slots * pages_for(max_seq_len, page_size)
            self.pool = PagePool(end_layer - start_layer, pages, page_size)
            self.context_buckets = tuple(sorted({pages_for(c, page_size) * page_size for c in self.context_buckets}))
        self._graphdef, self._state = weights.graphdef, weights.state
        self._hidden_dtype = np.dtype(jnp.dtype(config.dtype))
        self.cache: KVCache = (
            init_kv_cache(config, self.num_layers, max_slots, max_seq_len)
            if self.pool is None
            else init_paged_kv_cache(config, self.num_layers, self.pool.pages_per_layer, page_size)
        )
        self._free_slots = list(range(max_slots - 1, -1, -1))
        self._requests: dict[Hashable, _Request] = {}
        self._compile_count = 0
        self._weight_leaves, treedef = jax.tree.flatten(self._state)
        if compiler_options is None:
            compiler_options = default_compiler_options(config)
        self._program_key = (self._graphdef, treedef, return_logits, self.page_size, compiler_options)
        self.attention = self._attention_backend(attention)
        self._attention_auto = attention == "auto"
        self._program = step_program(*self._program_key, attention=self.attention)

    def _attention_backend(self, attention: str) -> str:
        if attention not in ("auto",) + ATTENTION_BACKENDS:
            raise ConfigError(f"attention must be 'auto', {' or '.join(map(repr, ATTENTION_BACKENDS))}, got {attention!r}")
        if attention == "auto":
            return "pallas" if self.page_size and jax.default_backend() == "gpu" else "gather"
        if attention == "pallas" and not self.page_size:
            raise ConfigError("attention 'pallas' reads a paged KV cache: it needs kv_layout 'paged'")
        return attention

    @classmethod
    def for_kv_budget(
        cls,
        config: ModelConfig,
        start_layer: int,
        end_layer: int,
        weights: StageWeights,
        kv_budget_bytes: int,
        max_seq_len: int,
        **options: Any,
    ) -> "StageEngine":
        """An engine with as many full-length slots as `kv_budget_bytes` of KV cache hold
        (ConfigError when not even one fits); `options` are the constructor's bucket options."""
        slots = slots_for_kv_budget(config, end_layer - start_layer, kv_budget_bytes, max_seq_len)
        if slots == 0:
            need = kv_cache_bytes(config, end_layer - start_layer, 1, max_seq_len)
            raise ConfigError(
                f"a KV budget of {kv_budget_bytes} bytes holds no slot of {max_seq_len} "
                f"tokens for {end_layer - start_layer} layers (one needs {need} bytes)"
            )
        return cls(config, start_layer, end_layer, weights, slots, max_seq_len, **options)

    # ---- capacity -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer

    @property
    def max_chunk_tokens(self) -> int:
        """Longest prefill chunk one StepInput may carry."""
        return self.prefill_buckets[-1]

    @property
    def compile_count(self) -> int:
        """Programs compiled by this engine's calls (a program already compiled for an identical
        stage in this process is reused and not counted); flat in steady state after warmup()."""
        return self._compile_count

    # ---- request lifetime -----------------------------------------------------------------
    def add_request(
        self, request_id: Hashable, sampling: SamplingParams | None = None, *, reserve_tokens: int = 0, run_start_layer: int | None = None
    ) -> int:
        """Take a slot for a new request and return it. Paged: also promise it the pages of
        `reserve_tokens` tokens (prompt + max_tokens; 0: pages are only taken as tokens arrive)
        on the layers from `run_start_layer` (default: the stage's first). Raises
        OverloadedError when no slot or not enough pages are free (nothing changes),
        RequestError when the id is already present."""
        slot = self._hold(request_id, reserve_tokens, run_start_layer)
        self._requests[request_id] = _Request(slot, sampling or SamplingParams())
        return slot

    def release(self, request_id: Hashable) -> None:
        """Free the request's slot, or its pages and unused reservation (its cached KV becomes
        garbage). Unknown ids: RequestError."""
        self._unhold(request_id)

    # ---- compute --------------------------------------------------------------------------
    def _args(self, batch: PaddedBatch, context_len: int) -> tuple:
        kv_index = batch.slots
        if self.pool is not None:
            kv_index = page_table_array(self.pool, [i.request_id for i in batch.items], len(batch.slots), context_len // self.page_size)
        return (
            self._weight_leaves,
            self.cache,
            batch.token_ids,
            batch.hidden,
            batch.run_start,
            batch.positions,
            batch.num_tokens,
            kv_index,
            batch.temperature,
            batch.top_k,
            batch.top_p,
            batch.seed,
        )

    def _run(self, batch: PaddedBatch, context_len: int):
        """Run the bucket's program on `batch`."""
        args = self._args(batch, context_len)
        CALLER.engine = self
        try:
            out, self.cache = self._program(*args, context_len=context_len)
        finally:
            CALLER.engine = None
        return jax.tree.map(np.asarray, out)

    def lower(self, rows: int, tokens: int, context_len: int) -> jax.stages.Lowered:
        """The program of one bucket (`rows` x `tokens`, attending over `context_len`), lowered
        for all-padding input and not compiled. Warm-up compiles it (jit's dispatch then finds
        the executable for these exact argument types); `.compile().as_text()` shows what XLA
        made of it (tests check that the KV cache is updated in place)."""
        CALLER.engine = self  # a bucket traced here counts as compiled, as in `_run`
        try:
            return self._program.lower(*self._args(self._pad([], rows, tokens), context_len), context_len=context_len)
        finally:
            CALLER.engine = None

    def _pad(self, items: list[StepInput], rows: int, tokens: int) -> PaddedBatch:
        requests = [self._requests[item.request_id] for item in items]
        return pad_batch(
            items, rows, tokens, self.config.hidden_size, self._hidden_dtype, [r.slot for r in requests], [r.sampling for r in requests]
        )

    def warmup(self) -> int:
        """Compile every (rows, tokens, context) bucket ahead of time, for all-padding batches of
        its shape, without running them (running them cost as much CPU as compiling, for a
        30-layer stage). Returns only when all are compiled; returns the number of buckets."""
        shapes = [(rows, 1) for rows in self.decode_buckets]
        shapes += [(rows, tokens) for rows in self.prefill_batch_buckets for tokens in self.prefill_buckets if tokens > 1]
        buckets = len(shapes) * len(self.context_buckets)
        if self.attention == "pallas" and self._attention_auto:  # the decode programs first: the kernel's only users
            compiled = self._compile_count
            try:
                for rows in self.decode_buckets:
                    for context_len in self.context_buckets:
                        self.lower(rows, 1, context_len).compile()
                shapes = shapes[len(self.decode_buckets) :]  # compiled, with the kernel
            except Exception as exc:  # the kernel's Triton lowering on this GPU: keep serving, on the gather
                log.warning("paged-attention kernel unavailable here (%s: %s); decode attention gathers pages", type(exc).__name__, exc)
                self.attention = "gather"
                self._program = step_program(*self._program_key, attention="gather")
                self._compile_count = compiled  # the kernel's programs are dropped: count what serves
        for rows, tokens in shapes:
            for context_len in self.context_buckets:
                self.lower(rows, tokens, context_len).compile()
        log.info("stage [%d, %d): %d programs compiled", self.start_layer, self.end_layer, self._compile_count)
        return buckets

    def step(self, items: Sequence[StepInput]) -> list[StepOutput]:
        """Run one continuous-batching step over `items` (prefill chunks and decode tokens of
        distinct held requests). Returns one StepOutput per item, in order. Raises
        RequestError (nothing is computed) for an unknown request, a repeated request, a
        changed entry layer, a position other than `tokens_cached`, a chunk longer than
        `max_chunk_tokens`, or a sequence past max_seq_len; OverloadedError (nothing computed)
        when the page pool cannot hold the step's new tokens (see `can_run`)."""
        items = list(items)
        check_step(items, self._requests, self.start_layer, self.end_layer, self.config, self.max_chunk_tokens, self.max_seq_len)
        if self.pool is not None:  # take every page the step writes, or none (nothing computed)
            need = sum(self.page_cost(item) for item in items)
            if need > self.pool.pages_available:
                raise OverloadedError(
                    f"stage [{self.start_layer}, {self.end_layer}): the step needs {need} "
                    f"more pages, {self.pool.pages_available} are available"
                )
            for item in items:
                self.pool.grow(item.request_id, item.run_start_layer - self.start_layer, item.position + item.num_tokens)
        results: dict[int, StepOutput] = {}
        order = sorted(range(len(items)), key=lambda i: items[i].num_tokens)
        decode = [i for i in order if items[i].num_tokens == 1]
        prefill = [i for i in order if items[i].num_tokens > 1]
        for group, row_buckets in ((decode, self.decode_buckets), (prefill, self.prefill_batch_buckets)):
            for begin in range(0, len(group), row_buckets[-1]):
                self._run_group(
                    [items[i] for i in group[begin : begin + row_buckets[-1]]], group[begin : begin + row_buckets[-1]], row_buckets, results
                )
        for item in items:
            request = self._requests[item.request_id]
            request.run_start_layer = item.run_start_layer
            request.next_position += item.num_tokens
        return [results[i] for i in range(len(items))]

    def _run_group(self, items: list[StepInput], indices: list[int], row_buckets: tuple[int, ...], results: dict[int, StepOutput]) -> None:
        longest = max(item.num_tokens for item in items)
        tokens = 1 if longest == 1 else pick_bucket(self.prefill_buckets, longest)
        rows = pick_bucket(row_buckets, len(items))
        context = pick_bucket(self.context_buckets, max(i.position + i.num_tokens for i in items))
        out = self._run(self._pad(items, rows, tokens), context)
        logits = None
        if self.is_last and self.return_logits:
            out, logits = out
        for row, (index, item) in enumerate(zip(indices, items)):
            if self.is_last:
                token = int(out[row]) if item.sample else None
                results[index] = StepOutput(item.request_id, next_token=token, logits=None if logits is None else logits[row])
            else:
                results[index] = StepOutput(item.request_id, hidden=out[row, : item.num_tokens])
