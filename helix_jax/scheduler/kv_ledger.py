"""KV ledger: per-node budgets of KV cache entries, counted in token-layers.

Owns the bookkeeping behind KV admission (HELIX.md section 4): admitting a request reserves
`tokens * layers_run_here` on every node of its route; finishing (or cancelling) it releases
exactly that. Reservations are all-or-nothing, so a node's use can never exceed its budget.
A node with a paged KV cache reports its page size (`page_tokens`): its reservations round
the tokens up to whole pages, `ceil(tokens / page) * page * layers`, exactly as the worker's
page pool allocates (helix_jax.model.paged_cache), so admission and allocation agree.
The simulator and the live coordinator share this class; neither touches the counts directly.
"""

from __future__ import annotations

import types
from typing import Iterable, Mapping

from helix_jax.errors import ConfigError, RequestError
from helix_jax.placement import Hop


class KVLedger:
    """Budgets and reservations in token-layer entries (one entry = one token's K and V for
    one layer)."""

    def __init__(self, budgets_token_layers: Mapping[str, int], page_tokens: Mapping[str, int] | None = None):
        for node, budget in budgets_token_layers.items():
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
                raise ConfigError(f"KV budget of node {node!r} must be a non-negative integer of token-layers, got {budget!r}")
        self._budget: dict[str, int] = dict(budgets_token_layers)
        self._page: dict[str, int] = {node: 1 for node in self._budget}
        for node, page in (page_tokens or {}).items():
            if node in self._page:
                if isinstance(page, bool) or not isinstance(page, int) or page < 1:
                    raise ConfigError(f"KV page size of node {node!r} must be a positive integer, got {page!r}")
                self._page[node] = page
        self._used: dict[str, int] = {node: 0 for node in self._budget}
        self._held: dict[str, tuple[tuple[str, int], ...]] = {}  # request -> ((node, entries), ...)

    # ---- queries ----
    def budget(self, node: str) -> int:
        try:
            return self._budget[node]
        except KeyError:
            raise ConfigError(f"node {node!r} has no KV budget in this ledger") from None

    def used(self, node: str) -> int:
        self.budget(node)
        return self._used[node]

    def used_view(self) -> Mapping[str, int]:
        """Token-layers reserved per node as a live read-only mapping (for a caller that checks
        every step; `used(node)` also validates the name)."""
        return types.MappingProxyType(self._used)

    def free(self, node: str) -> int:
        return self.budget(node) - self._used[node]

    def can_reserve(self, node: str, amount: int) -> bool:
        return amount <= self.free(node)

    def holds(self, request_id: str) -> bool:
        return request_id in self._held

    def reservation(self, request_id: str) -> tuple[tuple[str, int], ...]:
        """(node, token-layer entries) the request holds; empty if it holds none."""
        return self._held.get(request_id, ())

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._budget)

    def page_tokens(self, node: str) -> int:
        """Reservation granularity of `node` in tokens (1: token-granular)."""
        return self._page.get(node, 1)

    def entries(self, node: str, tokens: int, num_layers: int) -> int:
        """Token-layers `tokens` tokens on `num_layers` layers of `node` take (page-rounded)."""
        page = self._page.get(node, 1)
        return -(-tokens // page) * page * num_layers

    def fits(self, node: str, tokens: int, num_layers: int) -> bool:
        """Whether `tokens` tokens on `num_layers` layers of `node` fit in its free room now:
        `can_reserve(node, entries(node, tokens, num_layers))` in one call (a route search asks
        this of every candidate hop)."""
        page = self._page[node]
        return -(-tokens // page) * page * num_layers <= self._budget[node] - self._used[node]

    def entries_for(self, route: Iterable[Hop], tokens: int) -> tuple[tuple[str, int], ...]:
        """What a route of hops needs for `tokens` tokens: only the layers each hop runs."""
        return tuple((hop.node, self.entries(hop.node, tokens, hop.num_layers)) for hop in route)

    # ---- changes ----
    def reserve(self, request_id: str, route: Iterable[Hop], tokens: int) -> None:
        """Reserve `entries(node, tokens, hop.num_layers)` on every hop's node, or nothing at all.

        Raises RequestError if the request already holds a reservation or any node lacks room.
        """
        if request_id in self._held:
            raise RequestError(f"request {request_id!r} already holds a KV reservation")
        budget, used, page = self._budget, self._used, self._page
        need = []
        for hop in route:  # `entries_for` and `can_reserve`, inlined: admission runs this per hop
            node = hop.node
            if node not in budget:
                self.budget(node)  # raises the unknown node's ConfigError
            size = page.get(node, 1)
            amount = -(-tokens // size) * size * (hop.end_layer - hop.start_layer)
            if amount > budget[node] - used[node]:
                raise RequestError(f"request {request_id!r} needs {amount} KV token-layers on {node!r}, which has {self.free(node)} free")
            need.append((node, amount))
        for node, amount in need:
            used[node] += amount
        self._held[request_id] = tuple(need)

    def set_budget(self, node: str, budget_token_layers: int) -> None:
        """Change a node's budget (a replacement worker); only while it holds nothing."""
        if self.used(node):
            raise ConfigError(f"node {node!r} still holds {self._used[node]} KV token-layers")
        if isinstance(budget_token_layers, bool) or not isinstance(budget_token_layers, int) or budget_token_layers < 0:
            raise ConfigError(f"KV budget of node {node!r} must be a non-negative integer of token-layers, got {budget_token_layers!r}")
        self._budget[node] = budget_token_layers

    def release(self, request_id: str) -> int:
        """Give back everything the request holds; returns the entries freed (0 if none)."""
        need = self._held.pop(request_id, ())
        used, freed = self._used, 0
        for node, amount in need:
            used[node] -= amount
            freed += amount
        return freed

    def check(self) -> None:
        """Raise if the books do not balance (a guard for tests and the simulator)."""
        totals = {node: 0 for node in self._budget}
        for need in self._held.values():
            for node, amount in need:
                totals[node] += amount
        for node, total in totals.items():
            if total != self._used[node] or total > self._budget[node]:
                raise RuntimeError(
                    f"KV ledger out of balance on {node!r}: held {total}, recorded {self._used[node]}, budget {self._budget[node]}"
                )
