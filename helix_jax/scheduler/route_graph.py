"""Route graph: which next hops a request may take from each endpoint, and with what weight.

Owns the translation of a `Placement` into routing choices. For the flow-weighted policy
(IWRR) the candidates out of an endpoint are the placement's flow edges that carry at least
`min_edge_share` of that endpoint's outgoing flow (HELIX.md section 4); the baseline policies
(random, shortest queue, Swarm-style) may take any hand-off the placement allows. Because a
node's hop always ends at its own `end_layer`, the candidates out of a node do not depend on
where the request came from, so one successor list per endpoint is enough.
"""

from __future__ import annotations

from typing import Mapping

from helix_jax.errors import PlacementError
from helix_jax.placement import Placement
from helix_jax.topology import COORDINATOR


class RouteGraph:
    """Successor lists (coordinator and every node holding layers) with flow weights."""

    def __init__(self, placement: Placement, min_edge_share: float = 0.05, flow_edges_only: bool = True):
        if not 0.0 <= min_edge_share < 1.0:
            raise PlacementError(f"min_edge_share must be in [0, 1), got {min_edge_share!r}")
        self.placement = placement
        self.num_layers = placement.num_layers
        self.min_edge_share = min_edge_share
        self._weight: dict[tuple[str, str], float] = {}
        for edge in placement.flows:
            if edge.tokens_per_s <= 0:
                continue
            if not placement.can_hand_off(edge.src, edge.dst):
                raise PlacementError(f"flow edge {edge.src} -> {edge.dst} is not a valid hand-off under this placement's layer ranges")
            self._weight[(edge.src, edge.dst)] = self._weight.get((edge.src, edge.dst), 0.0) + edge.tokens_per_s
        endpoints = [COORDINATOR, *sorted(placement.ranges)]
        self._succ: dict[str, tuple[str, ...]] = {}
        for src in endpoints:
            if flow_edges_only:
                self._succ[src] = self._kept_flow_edges(src, min_edge_share)
            else:
                self._succ[src] = tuple(d for d in [*sorted(placement.ranges), COORDINATOR] if placement.can_hand_off(src, d))
        if not self._succ[COORDINATOR]:
            what = "flow" if flow_edges_only else "node holding layer 0"
            raise PlacementError(f"placement of {placement.topology_name!r} has no {what} out of the coordinator: nothing can be routed")

    def _kept_flow_edges(self, src: str, min_edge_share: float) -> tuple[str, ...]:
        out = [(dst, w) for (s, dst), w in self._weight.items() if s == src]
        total = sum(w for _, w in out)
        kept = [dst for dst, w in out if w >= min_edge_share * total]
        # Many equal small edges could all fall under the threshold: keep them all then.
        return tuple(sorted(kept or [dst for dst, _ in out]))

    def successors(self, src: str) -> tuple[str, ...]:
        return self._succ.get(src, ())

    def weight(self, src: str, dst: str) -> float:
        """Flow on the edge in tokens/s (0.0 for a hand-off that carries no flow)."""
        return self._weight.get((src, dst), 0.0)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._succ)

    def max_route_tokens(self, budgets_token_layers: Mapping[str, int], page_tokens=None) -> int:
        """The largest request (prompt + output tokens) that some route could hold on an empty
        cluster: max over routes of min over hops of budget // layers run there, in whole pages
        where `page_tokens(node)` (tokens per KV page) says so."""
        memo: dict[tuple[str, int], int] = {}

        def best(node: str, entry_layer: int) -> int:
            key = (node, entry_layer)
            if key not in memo:
                memo[key] = -1  # guards against a cycle (cannot happen with valid ranges)
                end = self.placement.ranges[node][1]
                here = budgets_token_layers.get(node, 0) // max(1, end - entry_layer)
                if page_tokens is not None:
                    here -= here % page_tokens(node)
                onward = self._onward(node, end, best)
                memo[key] = min(here, onward)
            return memo[key]

        return max(0, self._onward(COORDINATOR, 0, best))

    def _onward(self, src: str, layer: int, best) -> int:
        result = 0
        for dst in self.successors(src):
            if dst == COORDINATOR:
                if layer == self.num_layers:
                    result = max(result, 1 << 62)
            else:
                result = max(result, best(dst, layer))
        return result
