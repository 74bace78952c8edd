"""The paged KV cache's host bookkeeping: a pool of fixed-size pages per stage and a page
table per request (numpy only, no jax: the engine and the test fakes share it).

Owns: `PagePool` (free list, per-request page tables, up-front reservations, the token-layer
accounting the scheduler's KV ledger mirrors), `pages_for` (the one rounding rule) and
`page_table_array` (a padded batch's page tables). Sits in the runtime step of the data flow:
`engine.py` (and `helix_jax.testing.FakeRunner`) allocate pages before each step;
`paged_cache.py` holds the traced half that reads and writes the pages. Layout and the
token-layer arithmetic: paged_cache.py's docstring.
"""

from __future__ import annotations

from typing import Hashable

import numpy as np

from helix_jax.errors import ConfigError, OverloadedError, RequestError


def pages_for(tokens: int, page_size: int) -> int:
    """Pages that hold `tokens` tokens of one layer (the rounding shared with the KV ledger)."""
    return -(-max(0, int(tokens)) // page_size)


class _Table:
    __slots__ = ("first_layer", "pages", "reserved")

    def __init__(self, first_layer: int, num_layers: int, reserved: int):
        self.first_layer = first_layer  # local index of the first layer this request runs
        self.pages: list[list[int]] = [[] for _ in range(num_layers)]
        self.reserved = reserved  # pages promised up front (prompt + max_tokens), all layers

    @property
    def allocated(self) -> int:
        return sum(len(p) for p in self.pages)

    @property
    def committed(self) -> int:
        return max(self.reserved, self.allocated)


class PagePool:
    """Host bookkeeping of a stage's page pool. Not thread-safe (one engine thread)."""

    def __init__(self, num_layers: int, pages_per_layer: int, page_size: int):
        if page_size <= 0 or page_size & (page_size - 1):
            raise ConfigError(f"page_size must be a positive power of two, got {page_size}")
        if num_layers <= 0 or pages_per_layer <= 0:
            raise ConfigError(f"a page pool needs layers and pages, got {num_layers} x {pages_per_layer}")
        self.num_layers, self.pages_per_layer, self.page_size = num_layers, pages_per_layer, page_size
        self.total_pages = num_layers * pages_per_layer
        self._free = list(range(self.total_pages - 1, -1, -1))  # LIFO: freed pages are reused first
        self._tables: dict[Hashable, _Table] = {}
        self._committed = 0  # sum over tables of max(reserved, allocated)

    # ---- queries ----
    @property
    def pages_in_use(self) -> int:
        return self.total_pages - len(self._free)

    @property
    def pages_available(self) -> int:
        """Pages neither allocated nor promised to a held request."""
        return self.total_pages - self._committed

    @property
    def committed_token_layers(self) -> int:
        return self._committed * self.page_size

    def reservation_pages(self, tokens: int, first_layer: int = 0) -> int:
        return pages_for(tokens, self.page_size) * (self.num_layers - first_layer)

    def table(self, request_id: Hashable) -> _Table:
        return self._tables[request_id]

    def growth(self, request_id: Hashable, first_layer: int, tokens: int) -> int:
        """Pages a request must take from the pool (beyond its reservation) to hold `tokens`
        tokens on every layer from `first_layer`."""
        table = self._tables[request_id]
        need = sum(max(0, pages_for(tokens, self.page_size) - len(table.pages[layer])) for layer in range(first_layer, self.num_layers))
        spare = max(0, table.reserved - table.allocated)
        return max(0, need - spare)

    # ---- changes ----
    def open(self, request_id: Hashable, reserve_tokens: int = 0, first_layer: int = 0) -> None:
        """Start a page table, promising `reservation_pages(reserve_tokens, first_layer)` pages
        (OverloadedError, nothing changed, when the pool cannot promise them)."""
        if request_id in self._tables:
            raise RequestError(f"request {request_id!r} already has a page table")
        reserved = self.reservation_pages(reserve_tokens, first_layer)
        if reserved > self.pages_available:
            raise OverloadedError(f"page pool: {reserved} pages wanted, {self.pages_available} available")
        self._tables[request_id] = _Table(first_layer, self.num_layers, reserved)
        self._committed += reserved

    def grow(self, request_id: Hashable, first_layer: int, tokens: int) -> None:
        """Allocate pages so that the request holds `tokens` tokens on layers >= first_layer;
        OverloadedError (nothing allocated) when the pool is short."""
        if self.growth(request_id, first_layer, tokens) > self.pages_available:
            raise OverloadedError(f"page pool exhausted ({self.pages_in_use} of {self.total_pages} in use)")
        table = self._tables[request_id]
        before = table.committed
        want = pages_for(tokens, self.page_size)
        for layer in range(first_layer, self.num_layers):
            while len(table.pages[layer]) < want:
                table.pages[layer].append(self._free.pop())
        self._committed += table.committed - before

    def close(self, request_id: Hashable) -> int:
        """Free every page of the request and its unused reservation; returns pages freed."""
        table = self._tables.pop(request_id)
        for pages in table.pages:
            self._free.extend(reversed(pages))
        self._committed -= table.committed
        return table.allocated

    def check(self) -> None:
        """Raise if the books do not balance (tests)."""
        held = [p for t in self._tables.values() for pages in t.pages for p in pages]
        if len(held) != len(set(held)) or set(held) & set(self._free):
            raise RuntimeError("page pool: a page is held twice or both held and free")
        if len(held) + len(self._free) != self.total_pages or not 0 <= self._committed <= self.total_pages:
            raise RuntimeError("page pool out of balance")
        if self._committed != sum(t.committed for t in self._tables.values()):
            raise RuntimeError("page pool: committed count out of balance")


def page_table_array(pool: PagePool, request_ids: list, rows: int, width: int) -> np.ndarray:
    """Page tables of a padded batch: `[rows, layers, width]` int32 global page ids. Entries a
    request does not hold (skipped layers, pages not yet needed, padding rows) are 0: they are
    only read at masked positions and never written."""
    out = np.zeros((rows, pool.num_layers, width), np.int32)
    for row, rid in enumerate(request_ids):
        for layer, pages in enumerate(pool.table(rid).pages):
            if pages:
                out[row, layer, : len(pages)] = pages[:width]
    return out
