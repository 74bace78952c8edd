"""The request scheduler: FIFO queue -> route choice -> KV reservation -> release.

Owns admission for both the live coordinator and the simulator (they drive the same object):

1. `submit(spec)` appends the request to a bounded FIFO queue (`OverloadedError` past
   `queue_limit`; `RequestError` if no route could ever hold it, even on an empty cluster).
2. `admit_ready()` pops requests from the head while a route with KV room exists. A route is
   found by a depth-first walk from the coordinator (route_search.py): at each endpoint the
   policy orders the candidate next hops; a hop whose node lacks room for `(prompt +
   max_output) x layers it runs` is skipped, and a branch that dead-ends is backtracked. The
   head waits (strict FIFO, nothing is dropped) until some request finishes and frees KV.
3. The admitted route is fixed: the prompt and every decode step walk it. `on_decode_token`
   adds each decode token's load to its edges (IWRR), `on_hop_latency` / `on_node_queue`
   feed the Swarm-style and shortest-queue policies.
4. `finish(request_id)` releases the KV (also cancels a request still in the queue).
5. `fail_node(node)` takes a node out of service (its worker died or went silent): the
   requests routed through it are released and handed back (the coordinator resumes them on
   new routes with `submit(spec, front=True)`) and later routes avoid the node.
   `drop_unroutable()` hands back queued requests that no surviving route can hold;
   `reflow(placement)` makes new requests follow the survivors' max-flow (same layer ranges,
   recomputed flows) instead of the old flow's shares; `restore_node` brings a node back (a
   replacement worker joined).
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Mapping, Sequence

from helix_jax.errors import ConfigError, OverloadedError, RequestError
from helix_jax.placement import Hop, Placement
from helix_jax.scheduler.fixed_routes import FixedRoutes, placement_routes
from helix_jax.scheduler.kv_ledger import KVLedger
from helix_jax.scheduler.policies import RoutePolicy, policy_class
from helix_jax.scheduler.route_graph import RouteGraph
from helix_jax.scheduler.route_search import find_route
from helix_jax.scheduler.types import Admission, RequestSpec
from helix_jax.topology import COORDINATOR

log = logging.getLogger(__name__)

UNLIMITED_KV_TOKEN_LAYERS = 1 << 62


class _InFlight:
    __slots__ = ("admission", "edges", "decode_handle")

    def __init__(self, admission: Admission, edges: tuple[tuple[str, str], ...], decode_handle: Any):
        self.admission = admission
        self.edges = edges
        self.decode_handle = decode_handle  # the policy's `route_handle(edges)`


class Scheduler:
    """Flow-weighted (or baseline) routing with KV admission and a bounded FIFO queue."""

    def __init__(
        self,
        placement: Placement,
        kv_budgets_token_layers: Mapping[str, int] | None = None,
        policy: str = "iwrr",
        queue_limit: int = 10_000,
        min_edge_share: float = 0.05,
        seed: int = 0,
        kv_page_tokens: Mapping[str, int] | None = None,
    ):
        if isinstance(queue_limit, bool) or not isinstance(queue_limit, int) or queue_limit < 1:
            raise ConfigError(f"queue_limit must be a positive integer, got {queue_limit!r}")
        cls = policy_class(policy)
        self.placement = placement
        self.graph = RouteGraph(placement, min_edge_share, flow_edges_only=cls.flow_edges_only)
        if kv_budgets_token_layers is None:
            budgets = {node: UNLIMITED_KV_TOKEN_LAYERS for node in placement.ranges}
        else:
            missing = sorted(set(placement.ranges) - set(kv_budgets_token_layers))
            if missing:
                raise ConfigError(f"no KV budget given for node(s) {', '.join(missing)}")
            budgets = {node: kv_budgets_token_layers[node] for node in placement.ranges}
        self.ledger = KVLedger(budgets, kv_page_tokens)
        self.max_request_tokens = self.graph.max_route_tokens(budgets, self.ledger.page_tokens)
        self.queue_limit = queue_limit
        self._node_in_flight: dict[str, int] = {node: 0 for node in placement.ranges}
        self.policy: RoutePolicy = cls(self.graph, self._node_in_flight, seed)
        self._seed = seed
        self._queue: collections.deque[RequestSpec] = collections.deque()
        self._queued_ids: set[str] = set()
        self._in_flight: dict[str, _InFlight] = {}
        self._releases = 0  # bumped on every release: a blocked head is retried only after one
        self._blocked: tuple[str, int] | None = None
        self._down: set[str] = set()
        self._hops: dict[tuple[str, int, int], Hop] = {}  # every Hop a route search has made
        routes = placement_routes(placement) if cls.flow_edges_only else None
        self._fixed = FixedRoutes(routes) if routes else None  # SLO placements: whole routes only

    # ---- state ----
    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def down_nodes(self) -> tuple[str, ...]:
        """Nodes taken out of service by `fail_node`, sorted."""
        return tuple(sorted(self._down))

    def node_in_flight(self, node: str) -> int:
        return self._node_in_flight.get(node, 0)

    def admission(self, request_id: str) -> Admission:
        try:
            return self._in_flight[request_id].admission
        except KeyError:
            raise RequestError(f"request {request_id!r} is not in flight") from None

    # ---- 1. submit ----
    def submit(self, spec: RequestSpec, front: bool = False) -> None:
        """Queue a request at the tail, or with `front` at the head, past the queue limit (a
        request already accepted and resumed after a node failure must not be refused)."""
        if spec.request_id in self._queued_ids or spec.request_id in self._in_flight:
            raise RequestError(f"request id {spec.request_id!r} is already queued or in flight")
        if spec.kv_tokens > self.max_request_tokens:
            raise RequestError(self._too_big(spec))
        if not front and len(self._queue) >= self.queue_limit:
            raise OverloadedError(f"request queue is full ({self.queue_limit} waiting); retry later")
        if front:
            self._queue.appendleft(spec)
            self._blocked = None
        else:
            self._queue.append(spec)
        self._queued_ids.add(spec.request_id)

    def _too_big(self, spec: RequestSpec) -> str:
        why = (
            f"request {spec.request_id!r} needs {spec.kv_tokens} tokens of KV (prompt "
            f"{spec.prompt_tokens} + output {spec.max_output_tokens}) but the largest any route "
            f"can hold is {self.max_request_tokens}"
        )
        if self._down:
            why += f" with node(s) {', '.join(sorted(self._down))} out of service"
        return why

    # ---- 2. admit ----
    def admit_ready(self) -> list[Admission]:
        admitted: list[Admission] = []
        while self._queue:
            head = self._queue[0]
            if self._blocked == (head.request_id, self._releases):
                break  # nothing was released since this head last failed
            route = self._find_route(head)
            if route is None:
                self._blocked = (head.request_id, self._releases)
                break
            self._queue.popleft()
            self._queued_ids.discard(head.request_id)
            admitted.append(self._admit(head, route))
        return admitted

    def _find_route(self, spec: RequestSpec) -> tuple[Hop, ...] | None:
        if self._fixed is not None:  # SLO placements: whole routes only (fixed_routes.py)
            tokens, ledger = spec.kv_tokens, self.ledger
            return self._fixed.find(float(spec.prompt_tokens), lambda h: ledger.can_reserve(h.node, tokens * h.num_layers), self._down)
        return find_route(spec, self.placement, self.graph, self.policy, self.ledger, self._down, self._hops)

    def _admit(self, spec: RequestSpec, route: tuple[Hop, ...]) -> Admission:
        self.ledger.reserve(spec.request_id, route, spec.kv_tokens)
        nodes = [COORDINATOR, *(h.node for h in route), COORDINATOR]
        edges = tuple(zip(nodes[:-1], nodes[1:]))
        self.policy.on_admit(edges, float(spec.prompt_tokens))
        for hop in route:
            self._node_in_flight[hop.node] += 1
        if self._fixed is not None:
            self._fixed.add(route, float(spec.prompt_tokens))
        admission = Admission(spec.request_id, route, spec)
        self._in_flight[spec.request_id] = _InFlight(admission, edges, self.policy.route_handle(edges))
        log.debug("admitted %s via %s", spec.request_id, [h.node for h in route])
        return admission

    # ---- 3. observations ----
    def on_decode_token(self, request_id: str, tokens: int = 1) -> None:
        entry = self._in_flight.get(request_id)
        if entry is None:
            raise RequestError(f"request {request_id!r} is not in flight")
        self.policy.on_decode(entry.decode_handle, tokens)
        if self._fixed is not None:
            self._fixed.add(entry.admission.route, float(tokens))

    def on_decode_tokens(self, request_ids: Sequence[str]) -> None:
        """One decode token for each request, in order: `on_decode_token(rid)` for each, with
        the policy's loads updated in one pass (the simulator's batch of tokens back at the
        coordinator). Raises RequestError, changing nothing, if one is not in flight."""
        in_flight = self._in_flight
        entries = [in_flight.get(rid) for rid in request_ids]
        if None in entries:
            missing = next(rid for rid, entry in zip(request_ids, entries) if entry is None)
            raise RequestError(f"request {missing!r} is not in flight")
        self.policy.on_decode_many([entry.decode_handle for entry in entries])  # type: ignore[union-attr]
        if self._fixed is not None:
            for entry in entries:
                self._fixed.add(entry.admission.route, 1.0)  # type: ignore[union-attr]

    def on_hop_latency(self, node: str, seconds: float) -> None:
        self.policy.on_hop_latency(node, seconds)

    def on_node_queue(self, node: str, depth: int) -> None:
        self.policy.on_node_queue(node, depth)

    # ---- 4. finish / cancel ----
    def finish(self, request_id: str) -> bool:
        """Release a request's KV (completion or cancellation), or drop it from the queue if it
        was never admitted. Returns False if the id is unknown (already finished)."""
        entry = self._in_flight.pop(request_id, None)
        if entry is not None:
            self.ledger.release(request_id)
            for hop in entry.admission.route:
                self._node_in_flight[hop.node] -= 1
            self._releases += 1
            return True
        if request_id in self._queued_ids:
            self._queued_ids.discard(request_id)
            self._queue.remove(next(s for s in self._queue if s.request_id == request_id))
            self._blocked = None
            return True
        return False

    # ---- 5. node failures ----
    def fail_node(self, node: str) -> tuple[RequestSpec, ...]:
        """Take `node` out of service: release every request routed through it and
        return their specs in admission order (their KV on the surviving hops is freed too);
        routes found from now on avoid the node. Idempotent (a second call returns ())."""
        if node not in self.placement.ranges:
            raise ConfigError(f"node {node!r} holds no layers in this placement")
        if node in self._down:
            return ()
        self._down.add(node)
        hit = [rid for rid, entry in self._in_flight.items() if any(hop.node == node for hop in entry.admission.route)]
        specs = tuple(self._in_flight[rid].admission.spec for rid in hit)
        for rid in hit:
            self.finish(rid)
        self._routes_changed()
        log.warning(
            "node %s out of service: %d request(s) released, largest request a route can still hold: %d tokens",
            node,
            len(specs),
            self.max_request_tokens,
        )
        return specs

    def restore_node(self, node: str, kv_budget_token_layers: int) -> None:
        """Put a node taken out by `fail_node` back in service (a replacement worker with this
        KV budget); call `reflow` next so that flows reach it again."""
        if node not in self._down:
            raise ConfigError(f"node {node!r} is not out of service")
        self.ledger.set_budget(node, kv_budget_token_layers)
        self._down.discard(node)
        self._routes_changed()

    def _routes_changed(self) -> None:
        """After a node left or rejoined or the flows changed: the largest request a live route
        can hold, and a blocked queue head may fit now."""
        live = {n: 0 if n in self._down else self.ledger.budget(n) for n in self.placement.ranges}
        self.max_request_tokens = self.graph.max_route_tokens(live, self.ledger.page_tokens)
        self._blocked = None

    def reflow(self, placement: Placement) -> None:
        """Route new requests along `placement`'s flows from now on: the same layer ranges with
        new flows (after a failure, the max-flow of the nodes still in service). Requests in
        flight keep their routes and KV; the round robin starts afresh on the new weights."""
        if placement.ranges != self.placement.ranges:
            raise ConfigError("reflow needs the same layer ranges; only the flows may change")
        if any(edge.tokens_per_s > 0 and (edge.src in self._down or edge.dst in self._down) for edge in placement.flows):
            raise ConfigError(f"new flows pass through node(s) out of service: {', '.join(sorted(self._down))}")
        self.placement = placement
        self.graph = RouteGraph(placement, self.graph.min_edge_share, flow_edges_only=self.policy.flow_edges_only)
        if self.policy.flow_edges_only:  # weights changed: the round robin starts afresh
            self.policy = type(self.policy)(self.graph, self._node_in_flight, self._seed)
            for entry in self._in_flight.values():
                entry.decode_handle = self.policy.route_handle(entry.edges)
        else:  # observation-driven policies keep what they observed
            self.policy.graph = self.graph
        self._routes_changed()

    def drop_unroutable(self) -> list[tuple[RequestSpec, str]]:
        """Remove the queued requests that no surviving route can hold (after `fail_node`);
        returns each with the reason, in queue order."""
        dropped = [(spec, self._too_big(spec)) for spec in self._queue if spec.kv_tokens > self.max_request_tokens]
        for spec, _ in dropped:
            self._queue.remove(spec)
            self._queued_ids.discard(spec.request_id)
        if dropped:
            self._blocked = None
        return dropped
