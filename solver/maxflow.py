"""Max-flow of a given placement: the tokens/s a set of layer ranges can serve.

Sits after placement search and before the scheduler: solver (ranges) -> **max-flow** ->
Placement (ranges + flow per edge) -> scheduler (weighted round robin over those flows).

Graph (networkx, float capacities): the coordinator is split into a source `S` and a sink
`T`. Each node holding layers is split so that every limit counts:

    j.recv --(NIC in)--> j.in --(compute c(type, k))--> j.out --(NIC out)--> j.send

`S -> j.in` exists when j starts at layer 0 (link coordinator -> j), `i.out -> T` when i
ends at layer L (link i -> coordinator), and `i.send -> j.recv` when i may hand off to j
(`end_i == start_j`, or with partial inference `start_j <= end_i < end_j`), with capacity
`cost_model.link_tokens_per_s(i, j)`. NIC arcs exist only for GPU types with
`nic_bandwidth_bytes_per_s`; coordinator traffic (token ids) bypasses them. Hand-offs strictly
advance the layer, so the graph is acyclic and every flow decomposes into valid routes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import warnings
from typing import TYPE_CHECKING, Any, Iterable

import networkx as nx

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import PlacementError
from helix_jax.placement import FlowEdge, Placement
from helix_jax.solver.validate import validate_placement
from helix_jax.topology import COORDINATOR, Topology

if TYPE_CHECKING:
    from helix_jax.solver.classes import NodeClasses

log = logging.getLogger(__name__)

SOURCE, SINK = "S", "T"
FLOW_EPS = 1e-9  # flows below this are dropped from results


@dataclasses.dataclass(frozen=True)
class MaxFlowResult:
    value_tokens_per_s: float
    edge_flows: dict[tuple[str, str], float]  # (src, dst) endpoint names -> tokens/s, > 0 only
    node_flows: dict[str, float]  # tokens/s through each node holding layers
    graph: nx.DiGraph  # the split graph with "capacity" and "flow" on each arc
    cut_source_side: frozenset[str]  # split-graph vertices reachable from S in the residual

    def flow_edges(self) -> tuple[FlowEdge, ...]:
        """The flow as a Placement's edge list, sorted by (src, dst)."""
        return tuple(FlowEdge(s, d, f) for (s, d), f in sorted(self.edge_flows.items()))


def _hand_off(src_end: int, dst_range: tuple[int, int], partial_inference: bool) -> bool:
    start, end = dst_range
    return start <= src_end < end if partial_inference else src_end == start


def build_flow_graph(
    topology: Topology,
    cost_model: CostModel,
    ranges: dict[str, tuple[int, int]],
    partial_inference: bool = True,
    allowed_edges: Iterable[tuple[str, str]] | None = None,
    capacity_scale: dict[tuple[str, str], float] | None = None,
) -> nx.DiGraph:
    """The split graph of the module docstring. `allowed_edges` restricts node-to-node
    hand-offs (e.g. independent pipelines); `capacity_scale` multiplies arc capacities, keyed
    by the arc's (u, v) in the split graph (used by `explain`)."""
    num_layers = topology.model.num_layers
    allowed = set(allowed_edges) if allowed_edges is not None else None
    scale = capacity_scale or {}
    graph = nx.DiGraph()
    graph.add_node(SOURCE)
    graph.add_node(SINK)

    def arc(u: str, v: str, capacity: float, kind: str, name: str) -> None:
        graph.add_edge(u, v, capacity=capacity * scale.get((u, v), 1.0), kind=kind, name=name)

    recv, send = {}, {}
    for node in sorted(ranges):
        start, end = ranges[node]
        arc(f"{node}.in", f"{node}.out", cost_model.node_capacity_tokens_per_s(node, end - start), "compute", node)
        nic_tokens_per_s = cost_model.nic_tokens_per_s(node)
        if nic_tokens_per_s is not None:
            recv[node], send[node] = f"{node}.recv", f"{node}.send"
            arc(recv[node], f"{node}.in", nic_tokens_per_s, "nic_in", node)
            arc(f"{node}.out", send[node], nic_tokens_per_s, "nic_out", node)
        else:
            recv[node], send[node] = f"{node}.in", f"{node}.out"
        if start == 0:
            arc(SOURCE, f"{node}.in", cost_model.link_tokens_per_s(COORDINATOR, node), "link", f"{COORDINATOR}->{node}")
        if end == num_layers:
            arc(f"{node}.out", SINK, cost_model.link_tokens_per_s(node, COORDINATOR), "link", f"{node}->{COORDINATOR}")
    for src in sorted(ranges):
        for dst in sorted(ranges):
            if src == dst or not _hand_off(ranges[src][1], ranges[dst], partial_inference):
                continue
            if allowed is not None and (src, dst) not in allowed:
                continue
            arc(send[src], recv[dst], cost_model.link_tokens_per_s(src, dst), "link", f"{src}->{dst}")
    return graph


def _endpoint(vertex: str) -> str:
    if vertex in (SOURCE, SINK):
        return COORDINATOR
    return vertex.rsplit(".", 1)[0]


def import_cvxpy() -> Any:
    """cvxpy, imported without importing jax. On import cvxpy probes every solver it knows, and
    its MPAX probe imports jax before it finds that mpax is not installed: 0.4-0.8 s of CPU, and
    a JAX runtime in the planning (coordinator's) process, which never runs a model. We solve
    with HiGHS and Clarabel, so while cvxpy is first imported in a process that has not loaded
    jax, `import jax` fails at once (cvxpy's probe takes that as "MPAX not installed"). The
    planning processes import no jax in other threads meanwhile (the coordinator, the client and
    the HTTP front end never do: tests/test_runtime_units.py)."""
    if "cvxpy" in sys.modules or "jax" in sys.modules:
        import cvxpy

        return cvxpy
    sys.modules["jax"] = None  # type: ignore[assignment]
    try:
        import cvxpy
    finally:
        if sys.modules.get("jax", False) is None:
            del sys.modules["jax"]
    return cvxpy


def balanced_flow(graph: nx.DiGraph, value: float) -> dict[str, dict[str, float]] | None:
    """A maximum flow of `value` that spreads load: minimise sum over compute arcs of
    (flow / capacity)^2, so parallel nodes holding the same layers share the flow instead of
    one carrying it all (max-flow algorithms return an arbitrary optimum, often a lopsided
    one). Each node's KV holds flow x round trip requests, so this spreads KV pressure too.
    A convex QP (cvxpy, Clarabel); None if it fails (callers keep the max-flow algorithm's flow)."""
    import numpy as np
    import scipy.sparse as sp

    cp = import_cvxpy()

    arcs = list(graph.edges)
    cap = np.array([graph[u][v]["capacity"] for u, v in arcs], dtype=float)
    inner = {v: i for i, v in enumerate(x for x in graph.nodes if x not in (SOURCE, SINK))}
    rows, cols, signs = [], [], []  # incidence [inner vertices, arcs]: +1 into a vertex, -1 out of it
    for a, (u, v) in enumerate(arcs):
        for vertex, sign in ((v, 1.0), (u, -1.0)):
            if vertex in inner:
                rows.append(inner[vertex])
                cols.append(a)
                signs.append(sign)
    incidence = sp.csr_matrix((signs, (rows, cols)), shape=(len(inner), len(arcs)))
    leaving = np.array([1.0 if u == SOURCE else 0.0 for u, _ in arcs])
    f = cp.Variable(len(arcs), nonneg=True)
    cons = [f <= cap, incidence @ f == 0, leaving @ f == value]  # conservation; the whole value
    compute = [i for i, (u, v) in enumerate(arcs) if graph[u][v]["kind"] == "compute" and cap[i] > 0]
    # an arc standing for m identical nodes (classflow.py) counts m x (flow / capacity)^2
    weight = np.array([np.sqrt(float(graph[u][v].get("nodes", 1))) / graph[u][v]["capacity"] for u, v in (arcs[i] for i in compute)])
    scale = sp.csr_matrix((weight, (np.arange(len(compute)), compute)), shape=(len(compute), len(arcs)))
    objective = cp.sum_squares(scale @ f)
    problem = cp.Problem(cp.Minimize(objective), cons)
    try:
        with warnings.catch_warnings():  # "may be inaccurate": checked below instead
            warnings.simplefilter("ignore", UserWarning)
            problem.solve(solver="CLARABEL")
    except (cp.error.SolverError, ValueError) as exc:
        log.debug("balanced flow: %s; keeping the max-flow algorithm's flow", exc)
        return None
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or f.value is None:
        return None
    values = np.where(f.value > FLOW_EPS * max(1.0, value), np.clip(f.value, 0.0, cap), 0.0)
    out: dict[str, dict[str, float]] = {u: {} for u in graph.nodes}
    for (u, v), x in zip(arcs, values):
        out[u][v] = float(x)
    # an interior-point answer is accurate to ~1e-8; refuse anything that does not conserve flow
    for vertex in graph.nodes:
        if vertex not in (SOURCE, SINK):
            net = sum(out[u][vertex] for u in graph.predecessors(vertex)) - sum(out[vertex].values())
            if abs(net) > 1e-6 * max(1.0, value):
                return None
    if abs(sum(out[SOURCE].values()) - value) > 1e-6 * max(1.0, value):
        return None
    return out


def max_flow(
    topology: Topology,
    cost_model: CostModel,
    ranges: dict[str, tuple[int, int]],
    partial_inference: bool = True,
    allowed_edges: Iterable[tuple[str, str]] | None = None,
    capacity_scale: dict[tuple[str, str], float] | None = None,
    balance: bool = False,
) -> MaxFlowResult:
    """Max-flow of `ranges` (node -> [start, end)); zero when the ranges cannot form a route.
    `balance`: return the load-spreading maximum flow of `balanced_flow` (the value is the same;
    placements carry these flows, since the scheduler's round robin follows them)."""
    graph = build_flow_graph(topology, cost_model, ranges, partial_inference, allowed_edges, capacity_scale)
    value, flow, cut_side = solve_flow(graph, balance)
    edge_flows: dict[tuple[str, str], float] = {}
    for u, targets in flow.items():
        for v, f in targets.items():
            if graph[u][v]["kind"] == "link" and f > FLOW_EPS:
                edge_flows[(_endpoint(u), _endpoint(v))] = f
    node_flows = {n: flow[f"{n}.in"][f"{n}.out"] for n in ranges}
    return MaxFlowResult(float(value), edge_flows, node_flows, graph, cut_side)


def solve_flow(graph: nx.DiGraph, balance: bool) -> tuple[float, dict[str, dict[str, float]], frozenset[str]]:
    """(value, flow, source side of a minimum cut) of a flow graph; every edge's "flow" attribute
    is set. `balance`: the flow is the load-spreading maximum flow of `balanced_flow` (same value)."""
    value, flow = nx.maximum_flow(graph, SOURCE, SINK, flow_func=nx.algorithms.flow.preflow_push)
    for u, targets in flow.items():
        for v, f in targets.items():
            graph[u][v]["flow"] = f
    cut_side = _source_side(graph)  # residual reachability from S: the source side of a minimum cut
    if balance and value > FLOW_EPS:
        spread = balanced_flow(graph, value)
        if spread is not None:
            flow = spread
            for u, targets in flow.items():
                for v, f in targets.items():
                    graph[u][v]["flow"] = f
    return value, flow, cut_side


def _source_side(graph: nx.DiGraph) -> frozenset[str]:
    seen, stack = {SOURCE}, [SOURCE]
    while stack:
        u = stack.pop()
        for v in graph.successors(u):
            if v not in seen and graph[u][v]["capacity"] - graph[u][v]["flow"] > FLOW_EPS * 10:
                seen.add(v)
                stack.append(v)
        for v in graph.predecessors(u):
            if v not in seen and graph[v][u]["flow"] > FLOW_EPS * 10:
                seen.add(v)
                stack.append(v)
    return frozenset(seen)


def placement_with_flows(
    topology: Topology,
    cost_model: CostModel,
    ranges: dict[str, tuple[int, int]],
    method: str,
    partial_inference: bool = True,
    *,
    status: str = "feasible",
    upper_bound_tokens_per_s: float | None = None,
    solve_seconds: float = 0.0,
    extra: dict | None = None,
    allowed_edges: Iterable[tuple[str, str]] | None = None,
    balance: bool = True,
    classes: NodeClasses | None = None,
) -> Placement:
    """A validated Placement of `ranges` carrying its true max-flow (the load-spreading one of
    `balanced_flow` unless `balance` is False: callers that only read the ranges and the value).
    With `classes` (and no `allowed_edges`) the flow is computed on blocks of interchangeable
    nodes (classflow.py): the same flow, on a graph that grows with the blocks, not the nodes."""
    if not ranges:
        raise PlacementError("a placement needs at least one node holding layers")
    if classes is not None and allowed_edges is None:
        from helix_jax.solver.classflow import class_max_flow

        result = class_max_flow(topology, cost_model, classes, ranges, partial_inference, balance=balance)
    else:
        result = max_flow(topology, cost_model, ranges, partial_inference, allowed_edges, balance=balance)
    flows = result.flow_edges()
    objective = sum(f.tokens_per_s for f in flows if f.src == COORDINATOR)
    extra = dict(extra or {})
    if objective > 0:  # every token visits sum(node flows) / F nodes on average
        extra["mean_hops"] = round(sum(result.node_flows.values()) / objective, 4)
    upper = upper_bound_tokens_per_s
    if upper is not None and upper < objective:
        upper = objective  # numerical slack of the bound; never report a bound below the incumbent
    placement = Placement(
        topology_name=topology.name,
        num_layers=topology.model.num_layers,
        ranges=dict(sorted(ranges.items())),
        flows=flows,
        method=method,
        objective_tokens_per_s=objective,
        upper_bound_tokens_per_s=upper,
        partial_inference=partial_inference,
        status=status,
        solve_seconds=solve_seconds,
        extra=extra,
        workload=cost_model.workload,  # what "tokens/s" assumes
    )
    validate_placement(placement, topology, cost_model)
    return placement


def kept_hand_offs(placement: Placement) -> set[tuple[str, str]] | None:
    """The edges a max-flow recomputed for `placement`'s ranges may use: separate pipelines
    (method "sp") only the hand-offs they already use, so they stay separate; others any (None)."""
    return {(f.src, f.dst) for f in placement.flows} if placement.method == "sp" else None


def survivor_flows(topology: Topology, placement: Placement, down: Iterable[str]) -> Placement:
    """`placement` with the load-spreading max-flow of its nodes not in `down` (the runtime's
    re-plan after a node failure or rejoin). The ranges stay the original's, down nodes
    included (they carry no flow), so the scheduler keeps its layer map; separate pipelines
    stay separate (`kept_hand_offs`); capacities are priced for the workload the placement was
    planned for."""
    out = set(down)
    survivors = {n: r for n, r in placement.ranges.items() if n not in out}
    cost_model = CostModel(topology, WorkloadShape.recorded_in(placement))
    result = max_flow(topology, cost_model, survivors, placement.partial_inference, kept_hand_offs(placement), balance=True)
    return dataclasses.replace(placement, flows=result.flow_edges(), objective_tokens_per_s=result.value_tokens_per_s)
