"""Route search: the depth-first walk that finds one request a route with KV room on every hop.

Sits inside the scheduler: placement -> route graph -> **route search** -> KV reservation.
`Scheduler.admit_ready` (scheduler.py, step 2) calls `find_route` for the head of its queue.
It reads the route graph (candidate next hops), the policy (their order) and the KV ledger
(room on each node), and skips nodes out of service; it reserves nothing, and changes only the
caller's cache of Hop objects. Placements with explicit routes (SLO) are searched by
fixed_routes.py instead.

The walk starts at the coordinator with layer 0. At each endpoint the policy orders the
candidate next hops; a hop runs the layers from the current one to its node's end layer
(partial inference), and is taken only if the node has room for `(prompt + max_output) x
layers it runs` (rounded up to the node's KV pages). A branch that dead-ends is backtracked,
and the dead (node, entry layer) states are remembered, so one search visits each state at
most once. The route is found when the coordinator is reached after the last layer.
"""

from __future__ import annotations

from helix_jax.placement import Hop, Placement
from helix_jax.scheduler.kv_ledger import KVLedger
from helix_jax.scheduler.policies import RoutePolicy
from helix_jax.scheduler.route_graph import RouteGraph
from helix_jax.scheduler.types import RequestSpec
from helix_jax.topology import COORDINATOR


def find_route(
    spec: RequestSpec,
    placement: Placement,
    graph: RouteGraph,
    policy: RoutePolicy,
    ledger: KVLedger,
    down: set[str],
    hops: dict[tuple[str, int, int], Hop],
) -> tuple[Hop, ...] | None:
    """The first route (module docstring) that can hold `spec`, or None if none can now.

    `hops` caches one frozen Hop per (node, entry layer, end layer) across searches, so routes
    found again share their Hop objects instead of making new ones."""
    tokens, num_layers, ranges = spec.kv_tokens, placement.num_layers, placement.ranges
    work = float(spec.prompt_tokens)
    dead: set[tuple[str, int]] = set()
    path: list[tuple[str, int, int]] = []  # (node, entry layer, end layer); Hops once found
    fits = ledger.fits

    def walk(src: str, layer: int) -> bool:
        for dst in policy.order(src, graph.successors(src), work):
            if dst == COORDINATOR:
                if layer == num_layers:
                    return True
                continue
            key = (dst, layer)
            if key in dead or dst in down:
                continue
            end = ranges[dst][1]
            if fits(dst, tokens, end - layer):
                path.append((dst, layer, end))
                if walk(dst, end):
                    return True
                path.pop()
            dead.add(key)
        return False

    found = walk(COORDINATOR, 0)
    dead.clear()  # `walk` refers to itself: the cycle would keep the search's state until a collection
    if not found:
        return None
    route = []
    for key in path:
        hop = hops.get(key)
        if hop is None:
            hop = hops[key] = Hop(*key)
        route.append(hop)
    path.clear()
    return tuple(route)
