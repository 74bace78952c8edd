"""The paged KV cache: a pool of fixed-size pages per stage and a page table per request.

Owns: the traced helper `paged_write_read`; the host-side allocator (`PagePool`, `pages_for`,
`page_table_array`) lives in page_pool.py (numpy only) and is re-exported here.
Sits in the runtime step of the data flow: `engine.py` allocates pages before each step and
hands the batch's page tables to the jitted stage forward, where `layers.py` writes the new
tokens' K/V into their pages and gathers each row's pages back for attention.

Layout: the pool is `k, v: [layers, pages, page_size, kv_heads, head_dim]`, i.e.
`layers x pages` pages of `page_size` tokens for ONE layer each. Any page may serve any layer
of the stage, so a request entering the stage at a later layer (partial inference) holds
pages only for the layers it runs, and the stage's capacity in token-layers,
`layers x pages x page_size`, is what the ledger budgets: a request of T tokens run on n
layers takes `pages_for(T) x n` pages, the ledger reserves `pages_for(T) x page_size x n`.
Global page id g is page `g % pages` of layer slab `g // pages` (a free reshape to
`[layers * pages, page_size, ...]` inside the trace).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from helix_jax.model.page_pool import PagePool, page_table_array, pages_for

__all__ = ["PagePool", "page_table_array", "pages_for", "paged_write_read"]


def paged_write_read(
    k_pool: jax.Array,
    v_pool: jax.Array,
    page_table: jax.Array,
    layer: jax.Array,
    write_mask: jax.Array,
    query_pos: jax.Array,
    new_k: jax.Array,
    new_v: jax.Array,
    page_size: int,
):
    """Traced: write this step's K/V of one layer into their pages, then gather each row's pages.

    k_pool/v_pool `[total_pages, page_size, kv_heads, head_dim]` (flat), page_table
    `[B, layers, P]`, write_mask/query_pos `[B, T]`, new_k/new_v `[B, T, kv_heads, head_dim]`.
    Masked tokens target page `total_pages` and are dropped, so nothing is written out of
    bounds. Returns the pools and keys/values `[B, P * page_size, kv_heads, head_dim]` in
    position order.
    """
    total = k_pool.shape[0]
    table = jax.lax.dynamic_index_in_dim(page_table, layer, axis=1, keepdims=False)  # [B, P]
    batch, width = table.shape
    index = jnp.minimum(query_pos // page_size, width - 1)
    page = jnp.where(write_mask, jnp.take_along_axis(table, index, axis=1), total)
    offset = query_pos % page_size
    k_pool = k_pool.at[page, offset].set(new_k.astype(k_pool.dtype), mode="drop")
    v_pool = v_pool.at[page, offset].set(new_v.astype(v_pool.dtype), mode="drop")
    shape = (batch, width * page_size) + k_pool.shape[2:]
    return k_pool, v_pool, k_pool[table].reshape(shape), v_pool[table].reshape(shape)
