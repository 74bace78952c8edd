"""Fixed routes: weighted round robin over a placement's explicit routes (SLO placements).

Owns: reading `extra.routes` of a Placement (each a list of (node, entry layer, end layer) hops
with its flow in tokens/s) and choosing among them. A latency-SLO placement (solver/slo.py)
guarantees the round trip of each of its flow paths, not of every path through its flow edges
(hop-by-hop routing could join the head of one short route to the tail of another and exceed
the SLO), so the scheduler routes such placements along whole routes only.

Sits inside the scheduler: placement -> **fixed routes** -> route choice -> KV reservation.
The route with the smallest `load + work / flow` that has KV room on every hop (and no node out
of service) comes first; its load then grows by `work / flow` (prompt tokens at admission, one
per decode token afterwards), so each route's share of the work tracks its share of the flow.
"""

from __future__ import annotations

from typing import Callable

from helix_jax.errors import PlacementError
from helix_jax.placement import Hop, Placement


def placement_routes(placement: Placement) -> list[tuple[tuple[Hop, ...], float]] | None:
    """The explicit routes of `placement` ((hops, tokens/s)), or None if it has none."""
    raw = placement.extra.get("routes")
    if not raw:
        return None
    routes = []
    for entry in raw:
        try:
            hops = tuple(Hop(str(n), int(s), int(e)) for n, s, e in entry["hops"])
            flow = float(entry["tokens_per_s"])
        except (KeyError, TypeError, ValueError):
            raise PlacementError(f"placement's extra.routes entry is malformed: {entry!r}") from None
        layer = 0
        for hop in hops:
            held = placement.ranges.get(hop.node)
            if held is None or hop.start_layer != layer or not held[0] <= hop.start_layer < hop.end_layer == held[1]:
                raise PlacementError(f"route {[h.node for h in hops]} does not fit the placement's layer ranges")
            layer = hop.end_layer
        if layer != placement.num_layers or flow <= 0:
            raise PlacementError(f"route {[h.node for h in hops]} must cover every layer and carry flow")
        routes.append((hops, flow))
    return routes


class FixedRoutes:
    """Weighted round robin over whole routes (module docstring)."""

    def __init__(self, routes: list[tuple[tuple[Hop, ...], float]]):
        self.routes = routes
        self.load = [0.0] * len(routes)
        self._index = {hops: i for i, (hops, _) in enumerate(routes)}

    def find(self, work: float, fits: Callable[[Hop], bool], down: set[str]) -> tuple[Hop, ...] | None:
        order = sorted(range(len(self.routes)), key=lambda i: (self.load[i] + work / self.routes[i][1], i))
        for i in order:
            hops = self.routes[i][0]
            if all(h.node not in down and fits(h) for h in hops):
                return hops
        return None

    def add(self, route: tuple[Hop, ...], work: float) -> None:
        i = self._index.get(route)
        if i is not None:
            self.load[i] += work / self.routes[i][1]
