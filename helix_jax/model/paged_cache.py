"""The paged KV cache: a pool of fixed-size pages per stage and a page table per request.

Owns: the traced helpers `paged_write` (write this step's K/V into their pages), `paged_read`
(gather each row's pages back for attention) and `paged_decode_attention` (decode attention read straight from
the pages by JAX's Pallas paged-attention kernel, `jax.experimental.pallas.ops.gpu.paged_attention`);
the host-side allocator (`PagePool`, `pages_for`, `page_table_array`) lives in page_pool.py (numpy
only) and is re-exported here.
Sits in the runtime step of the data flow: `engine.py` allocates pages before each step and
hands the batch's page tables to the jitted stage forward, where `layers.py` calls these.

Layout: the pool is `k, v: [kv_heads, layers, pages, page_size, head_dim]`, i.e. `layers x
pages` pages of `page_size` tokens for ONE layer each, kv-head major (the kernel's layout: one
head's pages are one contiguous block). Any page may serve any layer of the stage, so a request
entering the stage at a later layer (partial inference) holds pages only for the layers it runs,
and the stage's capacity in token-layers, `layers x pages x page_size`, is what the ledger
budgets: a request of T tokens run on n layers takes `pages_for(T) x n` pages, the ledger
reserves `pages_for(T) x page_size x n`. Global page id g is page `g % pages` of layer slab
`g // pages`, addressed with both indices: reshaping the pool to one flat `[kv_heads, layers *
pages, ...]` axis inside the trace made XLA's CPU backend copy the whole pool around each
layer's write of an unrolled stage (a step then cost O(pool): 261 ms instead of 29 ms for
SmolLM2's 16 layers with 1,024 pages); only the Pallas kernel, which takes a flat pool, gets
the reshape.

Attention backends: "gather" (plain JAX: each row's pages gathered into a `[B, P x page_size]`
window; every step shape, every device) and "pallas" (decode steps only, one token per row: the
kernel reads the pages in place, in flash-attention blocks, and stops at each row's length;
compiled with Triton on a GPU, run by Pallas' interpreter elsewhere, which only tests use).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from helix_jax.model.page_pool import PagePool, page_table_array, pages_for

__all__ = ["PagePool", "page_table_array", "pages_for", "paged_decode_attention", "paged_read", "paged_write"]

ATTENTION_BACKENDS = ("gather", "pallas")


def paged_write(
    k_pool: jax.Array,
    v_pool: jax.Array,
    table: jax.Array,
    write_mask: jax.Array,
    query_pos: jax.Array,
    new_k: jax.Array,
    new_v: jax.Array,
    page_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Traced: write this step's K/V of one layer into their pages.

    k_pool/v_pool `[kv_heads, layers, pages, page_size, head_dim]`, table: the layer's global
    page ids `[B, P]`, write_mask/query_pos `[B, T]`, new_k/new_v `[B, T, kv_heads, head_dim]`.
    Masked tokens target the slab past the last (page id `layers x pages`) and are dropped, so
    nothing is written out of bounds.
    """
    pages, width = k_pool.shape[2], table.shape[1]
    index = jnp.minimum(query_pos // page_size, width - 1)
    page = jnp.where(write_mask, jnp.take_along_axis(table, index, axis=1), k_pool.shape[1] * pages)
    slab, page, offset = page // pages, page % pages, query_pos % page_size
    k_pool = k_pool.at[:, slab, page, offset].set(jnp.moveaxis(new_k, 2, 0).astype(k_pool.dtype), mode="drop")
    v_pool = v_pool.at[:, slab, page, offset].set(jnp.moveaxis(new_v, 2, 0).astype(v_pool.dtype), mode="drop")
    return k_pool, v_pool


def paged_read(k_pool: jax.Array, v_pool: jax.Array, table: jax.Array, page_size: int) -> tuple[jax.Array, jax.Array]:
    """Traced: gather each row's pages of one layer (global page ids `[B, P]`) out of the pools
    `[kv_heads, layers, pages, page_size, head_dim]`: keys/values `[B, P * page_size, kv_heads,
    head_dim]` in position order."""
    batch, width = table.shape
    pages = k_pool.shape[2]
    slab, page = table // pages, table % pages
    shape = (k_pool.shape[0], batch, width * page_size, k_pool.shape[-1])
    keys, values = (jnp.moveaxis(pool[:, slab, page].reshape(shape), 0, 2) for pool in (k_pool, v_pool))
    return keys, values


def paged_decode_attention(q: jax.Array, k_pool: jax.Array, v_pool: jax.Array, table: jax.Array, lengths: jax.Array) -> jax.Array:
    """Traced: decode attention of one query token per row, read from the pages by JAX's Pallas
    paged-attention kernel (Triton on a GPU, Pallas' interpreter elsewhere).

    q `[B, heads, head_dim]` (already scaled by 1/sqrt(head_dim)), pools `[kv_heads, layers,
    pages, page_size, head_dim]` (the kernel gets them flat), table `[B, P]` of global page ids,
    lengths `[B]` int32: keys a row may read
    (positions `[0, length)`; 0 for a row that reads nothing, whose output is 0). Returns
    `[B, heads, head_dim]`. The kernel splits each row's P pages into `k_splits` partitions of
    whole compute blocks, so both are taken from the divisors of P.
    """
    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention

    pages = table.shape[1]
    k_splits = math.gcd(pages, 16)
    per_split = pages // k_splits
    k_pool, v_pool = (pool.reshape((pool.shape[0], -1) + pool.shape[3:]) for pool in (k_pool, v_pool))
    return paged_attention(
        q,
        k_pool,
        v_pool,
        table,
        lengths,
        k_splits=k_splits,
        pages_per_compute_block=math.gcd(per_split, 8),
        interpret=jax.default_backend() != "gpu",
    )
