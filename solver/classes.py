"""Node classes: nodes that are interchangeable for placement and max-flow, found once per topology.

Sits at the solver's entrance: topology -> **classes** -> zones and groups (milp.py), aggregated
max-flow (classflow.py), heuristics and region windows. Everything the planner builds grows with
the number of classes, not with the number of nodes.

Two nodes are interchangeable when they have the same GPU type and every link from or to them
(the coordinator's included) is the same: swapping them changes no capacity. Start from
(GPU type, region); a node with a link that differs from its class's (a `pairs` entry in the
file) becomes a class of its own, and the scan repeats until every link between two classes is
one and the same. One scan reads each directed link once: O(nodes^2) dictionary reads, about
0.3 s for 650 nodes, done once per `plan`.

Zones (`zones`): classes joined, both ways, by links that can never bind. A link from i to j
carries at most what both ends carry, so it cannot bind when its capacity reaches the smaller
of the two nodes' best capacity (and the flow bound): that is the test, per class pair. Any
split is valid (a zone ignores its own links, which only loosens the bound), so a large class
with slow links among its own nodes stays in one zone rather than one zone per node.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from helix_jax.costmodel import CostModel
from helix_jax.topology import COORDINATOR, Topology

SPLIT_MAX_NODES = 16  # a class with slow links among its own nodes is split into zones up to this size


@dataclasses.dataclass(frozen=True)
class NodeClass:
    gpu: str
    region: str | None
    nodes: tuple[str, ...]  # in topology order


class NodeClasses:
    """The classes of one topology and the link capacity between any two of them."""

    def __init__(self, topology: Topology, cost_model: CostModel) -> None:
        self.topology, self.cost_model = topology, cost_model
        gpu_of = {n.name: n.gpu for n in topology.nodes}
        key = {n.name: (n.gpu, n.region) for n in topology.nodes}
        key[COORDINATOR] = ("coordinator", None)
        names = [COORDINATOR, *topology.node_names]
        while True:
            odd = self._irregular(names, key, topology)
            if not odd:
                break
            for name in odd:
                key[name] = (*key[name][:2], name)
        members: dict[tuple, list[str]] = defaultdict(list)
        for name in topology.node_names:
            members[key[name]].append(name)
        self.classes = [NodeClass(gpu_of[nodes[0]], topology.node(nodes[0]).region, tuple(nodes)) for nodes in members.values()]
        self.index = {name: c for c, cls in enumerate(self.classes) for name in cls.nodes}

    @staticmethod
    def _irregular(names: list[str], key: dict, topology: Topology) -> set[str]:
        """Nodes with a link that differs from the first link seen between their two classes."""
        expected: dict[tuple, object] = {}
        odd: set[str] = set()
        links = topology.links
        for a in names:
            ka = key[a]
            for b in names:
                if a == b:
                    continue
                link = links[(a, b)]
                pair = (ka, key[b])
                seen = expected.setdefault(pair, link)
                if seen is not link and seen != link:
                    odd.update(n for n in (a, b) if n != COORDINATOR)
        return odd

    def __len__(self) -> int:
        return len(self.classes)

    def _pair(self, a: int, b: int) -> tuple[str, str] | None:
        """Two distinct nodes of classes a and b (None: a one-node class with itself)."""
        src = self.classes[a].nodes
        dst = self.classes[b].nodes
        if a != b:
            return src[0], dst[0]
        return (src[0], src[1]) if len(src) > 1 else None

    def link_tokens_per_s(self, a: int, b: int) -> float:
        """Capacity of every link from a node of class a to another node of class b."""
        pair = self._pair(a, b)
        return self.cost_model.link_tokens_per_s(*pair) if pair else 0.0

    def coordinator_tokens_per_s(self, c: int, into: bool) -> float:
        node = self.classes[c].nodes[0]
        return self.cost_model.link_tokens_per_s(*((COORDINATOR, node) if into else (node, COORDINATOR)))

    def best_capacity(self, c: int) -> float:
        table = self.cost_model.capacity_table(self.classes[c].gpu)
        return max(table, default=0.0)

    def zones(self, flow_bound: float) -> list[list[str]]:
        """Node names per zone (module docstring), zones in the order of their first node. A class
        whose own links may bind (two nodes joined only by a slow link) is split into one unit
        per node when it has at most SPLIT_MAX_NODES nodes; a larger one stays whole (a looser
        bound, but a model that does not grow with the nodes)."""
        best = [min(flow_bound, self.best_capacity(c)) for c in range(len(self.classes))]
        units: list[tuple[int, tuple[str, ...]]] = []  # (class, its nodes in this unit)
        for c, cls in enumerate(self.classes):
            split = len(cls.nodes) <= SPLIT_MAX_NODES and self.link_tokens_per_s(c, c) < best[c]
            units += [(c, (n,)) for n in cls.nodes] if split and len(cls.nodes) > 1 else [(c, cls.nodes)]
        parent = list(range(len(units)))

        def root(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for i, (a, _) in enumerate(units):
            for j in range(i + 1, len(units)):
                b = units[j][0]
                if min(self.link_tokens_per_s(a, b), self.link_tokens_per_s(b, a)) >= min(best[a], best[b]):
                    parent[root(i)] = root(j)
        zones: dict[int, list[str]] = defaultdict(list)
        for i, (_, nodes) in enumerate(units):
            zones[root(i)].extend(nodes)
        order = {name: i for i, name in enumerate(self.topology.node_names)}
        return sorted((sorted(z, key=order.__getitem__) for z in zones.values()), key=lambda z: order[z[0]])
