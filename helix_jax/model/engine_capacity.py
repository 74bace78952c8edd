"""What a StageEngine's KV cache holds and can still take: the queries the worker and the
scheduler's KV ledger rely on.

Owns: `KVCapacity`, the capacity half of `StageEngine` (a mixin over its `pool`, `_requests`,
`_free_slots` and layer range): capacity in token-layers, the page granularity the ledger
rounds to, token-layers committed, and whether a request or a step can have its pages now.
Sits in the runtime step of the data flow, between the worker's batching (stage_host.py),
which asks before it adds a request or batches a step, and the engine, which allocates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from helix_jax.errors import OverloadedError, RequestError
from helix_jax.model.batching import StepInput


class KVCapacity:
    """Mixin of StageEngine: KV capacity and page queries (contiguous or paged layout)."""

    # provided by StageEngine (declared for the type checker; no values here)
    pool: Any
    page_size: int
    max_slots: int
    max_seq_len: int
    _requests: dict[Any, Any]
    _free_slots: list[int]
    cache: Any
    start_layer: int

    if TYPE_CHECKING:

        @property
        def num_layers(self) -> int: ...

    @property
    def kv_capacity_token_layers(self) -> int:
        """KV entries (tokens x layers) this stage can hold: max_slots * max_seq_len * layers
        (contiguous), layers * pages * page_size (paged: what the scheduler's ledger budgets)."""
        if self.pool is not None:
            return self.pool.total_pages * self.page_size
        return self.max_slots * self.max_seq_len * self.num_layers

    @property
    def kv_page_tokens(self) -> int | None:
        """Granularity the KV ledger must round reservations to (tokens per page), or None for
        the contiguous layout (whole slots)."""
        return self.page_size or None

    @property
    def kv_committed_token_layers(self) -> int:
        """Token-layers held or promised (paged: pages allocated or reserved x page_size;
        contiguous: held slots x max_seq_len x layers)."""
        if self.pool is not None:
            return self.pool.committed_token_layers
        return len(self._requests) * self.max_seq_len * self.num_layers

    @property
    def kv_cache_bytes(self) -> int:
        k = self.cache.k
        return int(np.prod(k.shape)) * k.dtype.itemsize * 2

    @property
    def free_slots(self) -> int:
        """Slots not held by any request (paged: requests that may still be added)."""
        return len(self._free_slots)

    @property
    def pages_available(self) -> int:
        """Pages neither allocated nor promised (paged); contiguous: a number never reached."""
        return self.pool.pages_available if self.pool is not None else 1 << 62

    def page_cost(self, item: StepInput, reserve_tokens: int = 0) -> int:
        """Pages running `item` would take from the pool: for a held request its growth beyond
        what it holds or was promised; for a new one the larger of its reservation and the
        item's pages (0 when contiguous)."""
        if self.pool is None:
            return 0
        first, end = item.run_start_layer - self.start_layer, item.position + item.num_tokens
        if item.request_id in self._requests:
            return self.pool.growth(item.request_id, first, end)
        return max(self.pool.reservation_pages(reserve_tokens, first), self.pool.reservation_pages(end, first))

    def _get(self, request_id: Any) -> Any:
        request = self._requests.get(request_id)
        if request is None:
            raise RequestError(f"request {request_id!r} is not held by this stage (call add_request)")
        return request

    def has_request(self, request_id: Any) -> bool:
        return request_id in self._requests

    def tokens_cached(self, request_id: Any) -> int:
        """Positions of `request_id` already in this stage's KV cache (its next position)."""
        return int(self._get(request_id).next_position)

    def _hold(self, request_id: Any, reserve_tokens: int, run_start_layer: int | None) -> int:
        """`add_request`'s checks and bookkeeping: a free slot and (paged) the promised pages;
        returns the slot (the caller records the request under `request_id`). OverloadedError
        when no slot or not enough pages are free, RequestError for a held id; nothing changes."""
        if request_id in self._requests:
            raise RequestError(f"request {request_id!r} is already held by this stage")
        end = self.start_layer + self.num_layers
        if not self._free_slots:
            raise OverloadedError(f"stage [{self.start_layer}, {end}) has no free KV slot ({self.max_slots} held)")
        if self.pool is not None:
            first = (self.start_layer if run_start_layer is None else run_start_layer) - self.start_layer
            if not 0 <= first < self.num_layers:
                raise RequestError(
                    f"request {request_id!r}: run_start_layer {run_start_layer} is outside this stage's layers [{self.start_layer}, {end})"
                )
            self.pool.open(request_id, reserve_tokens, first)
        return self._free_slots.pop()

    def _unhold(self, request_id: Any) -> Any:
        """`release`'s bookkeeping: the request's record, its slot and pages freed (RequestError
        for an id not held)."""
        request = self._requests.pop(request_id, None)
        if request is None:
            raise RequestError(f"request {request_id!r} is not held by this stage")
        self._free_slots.append(request.slot)
        if self.pool is not None:
            self.pool.close(request_id)
        return request

    def can_add(self, reserve_tokens: int = 0, run_start_layer: int | None = None) -> bool:
        """Whether `add_request` with these arguments would succeed now (slot and pages)."""
        if not self._free_slots or self.pool is None:
            return bool(self._free_slots)
        first = (self.start_layer if run_start_layer is None else run_start_layer) - self.start_layer
        return self.pool.reservation_pages(reserve_tokens, first) <= self.pool.pages_available

    def can_run(self, item: StepInput) -> bool:
        """Whether the pages a held request's `item` needs can be had now."""
        return self.page_cost(item) <= self.pages_available
