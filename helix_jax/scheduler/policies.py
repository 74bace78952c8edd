"""Next-hop policies: how the scheduler orders the candidate hops out of an endpoint.

Owns the four policies the scheduler can run behind one interface:

* `iwrr` (Helix): interleaved weighted round robin per endpoint over its flow edges. Each
  edge keeps a load; the candidate with the smallest `load + work / weight` comes first and,
  once the request is admitted, `work / weight` is added to every edge of its route (work =
  prompt tokens at admission, one per decode token afterwards). Over many requests each
  edge's share of work tracks its share of the flow.
* `random`: a uniformly random order over the allowed hand-offs (seeded).
* `shortest-queue`: the node with the fewest queued requests (as last observed), then the
  fewest requests in flight through it.
* `swarm`: the node with the lowest moving average of observed hop latency (unobserved
  nodes first, so each gets measured), then the fewest requests in flight.

The scheduler tries candidates in the returned order and skips those without KV room, so a
policy never needs to know about memory.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import numpy as np

from helix_jax.errors import ConfigError
from helix_jax.scheduler.route_graph import RouteGraph

POLICIES = ("iwrr", "random", "shortest-queue", "swarm")
SWARM_EMA_WEIGHT = 0.2  # weight of the newest latency observation


class RoutePolicy:
    """Base: orders candidates; hears about admissions, decode tokens and observations."""

    name = "base"
    flow_edges_only = False  # whether the policy routes only along the placement's flow edges

    def __init__(self, graph: RouteGraph, in_flight_per_node: Mapping[str, int], seed: int = 0):
        self.graph = graph
        self.in_flight_per_node = in_flight_per_node

    def order(self, src: str, candidates: Sequence[str], work: float) -> list[str]:
        raise NotImplementedError

    def on_admit(self, edges: Sequence[tuple[str, str]], work: float) -> None:
        """A request was admitted along `edges` (coordinator -> ... -> coordinator)."""

    def route_handle(self, edges: Sequence[tuple[str, str]]) -> Any:
        """What `on_decode` is given for a route admitted along `edges`: resolved once at
        admission (and again when a reflow replaces the policy), since a route's decode tokens
        far outnumber its admissions. The edges themselves unless a policy keeps more."""
        return edges

    def on_decode(self, handle: Any, tokens: int) -> None:
        """`tokens` decode tokens of an admitted request went along its route (`handle` is
        `route_handle(edges)`)."""

    def on_decode_many(self, handles: Sequence[Any]) -> None:
        """One decode token for each handle, in order (`on_decode(handle, 1)` each)."""
        for handle in handles:
            self.on_decode(handle, 1)

    def on_hop_latency(self, node: str, seconds: float) -> None:
        pass

    def on_node_queue(self, node: str, depth: int) -> None:
        pass


class IwrrPolicy(RoutePolicy):
    name = "iwrr"
    flow_edges_only = True

    def __init__(self, graph: RouteGraph, in_flight_per_node: Mapping[str, int], seed: int = 0):
        super().__init__(graph, in_flight_per_node, seed)
        # each flow edge's index into `_loads` (work / weight so far) and `_inverse` (1 / weight):
        # a route's handle is its edges' indices, so a batch of decode tokens is one numpy call
        self._index: dict[tuple[str, str], int] = {}
        inverse: list[float] = []
        for src in graph.endpoints:
            for dst in graph.successors(src):
                self._index[(src, dst)] = len(inverse)
                inverse.append(1.0 / graph.weight(src, dst))
        self._inverse_list = inverse  # the same values as Python floats, for `order`'s keys
        self._inverse = np.array(inverse, dtype=np.float64)
        self._loads = np.zeros(len(inverse), dtype=np.float64)

    @property
    def load(self) -> dict[tuple[str, str], float]:
        """Each flow edge's load (work / weight so far)."""
        return {edge: self._loads.item(i) for edge, i in self._index.items()}

    def order(self, src: str, candidates: Sequence[str], work: float) -> list[str]:
        if len(candidates) < 2:
            return list(candidates)
        index, load, inverse = self._index, self._loads.item, self._inverse_list

        def key(dst: str) -> float:
            i = index[(src, dst)]
            return load(i) + work * inverse[i]

        # Stable sort: ties go to the order of `candidates` (sorted names), deterministic.
        return sorted(candidates, key=key)

    def on_admit(self, edges: Sequence[tuple[str, str]], work: float) -> None:
        at = np.array([self._index[edge] for edge in edges], dtype=np.intp)  # a route repeats no edge
        self._loads[at] += work * self._inverse[at]

    def route_handle(self, edges: Sequence[tuple[str, str]]) -> np.ndarray:
        """The indices of the route's edges that carry flow now (a route admitted before a
        reflow may use edges the new flows no longer weigh)."""
        index = self._index
        return np.array([index[edge] for edge in edges if edge in index], dtype=np.intp)

    def on_decode(self, handle: np.ndarray, tokens: int) -> None:
        self._loads[handle] += tokens * self._inverse[handle]

    def on_decode_many(self, handles: Sequence[np.ndarray]) -> None:
        """One token each, added edge by edge in order (`np.add.at` is unbuffered), so the
        loads are those of `on_decode` called once per handle, to the last bit."""
        if handles:
            at = np.concatenate(handles)
            np.add.at(self._loads, at, self._inverse[at])


class RandomPolicy(RoutePolicy):
    name = "random"

    def __init__(self, graph: RouteGraph, in_flight_per_node: Mapping[str, int], seed: int = 0):
        super().__init__(graph, in_flight_per_node, seed)
        self._rng = random.Random(seed)

    def order(self, src: str, candidates: Sequence[str], work: float) -> list[str]:
        shuffled = list(candidates)
        self._rng.shuffle(shuffled)
        return shuffled


class _ObservedPolicy(RoutePolicy):
    """Base of the observation-driven baselines: candidates in order of their last observed
    score (unobserved nodes count as 0, so they come first), then fewest requests in flight."""

    def __init__(self, graph: RouteGraph, in_flight_per_node: Mapping[str, int], seed: int = 0):
        super().__init__(graph, in_flight_per_node, seed)
        self.observed: dict[str, float] = {}  # node -> score; what it means is the subclass's

    def order(self, src: str, candidates: Sequence[str], work: float) -> list[str]:
        observed, busy = self.observed, self.in_flight_per_node
        return sorted(candidates, key=lambda d: (observed.get(d, 0), busy.get(d, 0)))


class ShortestQueuePolicy(_ObservedPolicy):
    """`observed`: each node's waiting-line depth, as last reported."""

    name = "shortest-queue"

    def on_node_queue(self, node: str, depth: int) -> None:
        self.observed[node] = depth


class SwarmPolicy(_ObservedPolicy):
    """`observed`: a moving average of each node's hop latency, seconds."""

    name = "swarm"

    def on_hop_latency(self, node: str, seconds: float) -> None:
        old = self.observed.get(node)
        self.observed[node] = seconds if old is None else (SWARM_EMA_WEIGHT * seconds + (1.0 - SWARM_EMA_WEIGHT) * old)


_POLICY_CLASSES: dict[str, type[RoutePolicy]] = {p.name: p for p in (IwrrPolicy, RandomPolicy, ShortestQueuePolicy, SwarmPolicy)}


def policy_class(name: str) -> type[RoutePolicy]:
    try:
        return _POLICY_CLASSES[name]
    except KeyError:
        raise ConfigError(f"unknown scheduling policy {name!r}; choose one of {', '.join(POLICIES)}") from None
