"""Max-flow of a placement on blocks of interchangeable nodes, expanded to nodes in O(edges).

Sits beside maxflow.py: ranges + node classes (classes.py) -> **block graph** -> max-flow (and the
load-spreading flow) -> node-level flows for the Placement. plan.py evaluates every candidate
this way; the graph grows with the blocks in use, not with the nodes.

A block is the set of m nodes of one class holding one range [s, e). In the block graph its
compute arc has capacity m c(type, e - s), its NIC arcs m x NIC, its coordinator links m x link,
and a hand-off from block A (m_A nodes) to block B (m_B) has m_A m_B x link(A, B): every pair of
their nodes is a distinct link of the same capacity (a node holds one range, so the two blocks
share no node). The block max-flow equals the node max-flow: summing node flows over blocks
gives a block flow (so block >= node), and spreading a block flow evenly, F / m per node and
F / (m_A m_B) per node pair, gives a node flow within every node, NIC and link capacity (so
node >= block). The even spread also minimises the node-level load-spreading objective
sum (flow / capacity)^2 for a given block flow (convexity and symmetry), so the QP on the block
graph with weight 1 / m per compute arc is the node-level QP of maxflow.balanced_flow.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx

from helix_jax.costmodel import CostModel
from helix_jax.solver.classes import NodeClasses
from helix_jax.solver.maxflow import FLOW_EPS, SINK, SOURCE, MaxFlowResult, _hand_off, solve_flow
from helix_jax.topology import COORDINATOR, Topology

Block = tuple[int, int, int]  # (class, start, end)


def blocks_of(classes: NodeClasses, ranges: dict[str, tuple[int, int]]) -> dict[Block, list[str]]:
    """The nodes of each (class, start, end) in use, in name order."""
    blocks: dict[Block, list[str]] = defaultdict(list)
    for node in sorted(ranges):
        start, end = ranges[node]
        blocks[(classes.index[node], start, end)].append(node)
    return dict(blocks)


def build_block_graph(
    topology: Topology, cost_model: CostModel, classes: NodeClasses, blocks: dict[Block, list[str]], partial_inference: bool
) -> nx.DiGraph:
    """The split graph of maxflow.py with one vertex chain per block (module docstring)."""
    L = topology.model.num_layers
    graph = nx.DiGraph()
    graph.add_node(SOURCE)
    graph.add_node(SINK)
    recv, send = {}, {}
    for block in sorted(blocks):
        c, start, end = block
        m, name = len(blocks[block]), f"b{c}[{start},{end})"
        rep = blocks[block][0]
        gpu = classes.classes[c].gpu
        graph.add_edge(
            f"{name}.in", f"{name}.out", capacity=m * cost_model.capacity_tokens_per_s(gpu, end - start), kind="compute", name=name, nodes=m
        )
        nic = cost_model.nic_tokens_per_s(rep)
        if nic is not None:
            recv[block], send[block] = f"{name}.recv", f"{name}.send"
            graph.add_edge(recv[block], f"{name}.in", capacity=m * nic, kind="nic_in", name=name)
            graph.add_edge(f"{name}.out", send[block], capacity=m * nic, kind="nic_out", name=name)
        else:
            recv[block], send[block] = f"{name}.in", f"{name}.out"
        if start == 0:
            graph.add_edge(
                SOURCE, f"{name}.in", capacity=m * classes.coordinator_tokens_per_s(c, True), kind="link", name=f"{COORDINATOR}->{name}"
            )
        if end == L:
            graph.add_edge(
                f"{name}.out", SINK, capacity=m * classes.coordinator_tokens_per_s(c, False), kind="link", name=f"{name}->{COORDINATOR}"
            )
    by_end: dict[int, list[Block]] = defaultdict(list)
    for block in blocks:
        by_end[block[2]].append(block)
    for dst in sorted(blocks):
        _, d_start, d_end = dst
        sources = [b for e in (range(d_start, d_end) if partial_inference else [d_start]) for b in by_end.get(e, ())]
        for src in sorted(sources):
            if not _hand_off(src[2], (d_start, d_end), partial_inference):
                continue
            pairs = len(blocks[src]) * len(blocks[dst])
            graph.add_edge(
                send[src],
                recv[dst],
                capacity=pairs * classes.link_tokens_per_s(src[0], dst[0]),
                kind="link",
                name=f"{src}->{dst}",
                src=src,
                dst=dst,
            )
    return graph


def class_max_flow(
    topology: Topology,
    cost_model: CostModel,
    classes: NodeClasses,
    ranges: dict[str, tuple[int, int]],
    partial_inference: bool = True,
    balance: bool = False,
) -> MaxFlowResult:
    """maxflow.max_flow computed on blocks: the same value and, with `balance`, the same
    load-spreading flow; `graph` and `cut_source_side` are the block graph's."""
    blocks = blocks_of(classes, ranges)
    graph = build_block_graph(topology, cost_model, classes, blocks, partial_inference)
    value, _, cut_side = solve_flow(graph, balance)
    return _expand(graph, blocks, float(value), cut_side)


def _expand(graph: nx.DiGraph, blocks: dict[Block, list[str]], value: float, cut_side: frozenset[str]) -> MaxFlowResult:
    """Node-level flows: each block's flow spread evenly over its nodes and node pairs."""
    edge_flows: dict[tuple[str, str], float] = {}
    node_flows: dict[str, float] = {}
    name_of = {f"b{c}[{s},{e})": (c, s, e) for c, s, e in blocks}
    threshold = FLOW_EPS * max(1.0, value)
    for u, v, data in graph.edges(data=True):
        f = data.get("flow", 0.0)
        if data["kind"] == "compute":
            nodes = blocks[name_of[data["name"]]]
            for node in nodes:
                node_flows[node] = f / len(nodes)
        if data["kind"] != "link" or f <= threshold:
            continue
        if u == SOURCE:
            nodes = blocks[name_of[v.rsplit(".", 1)[0]]]
            edge_flows.update({(COORDINATOR, n): f / len(nodes) for n in nodes})
        elif v == SINK:
            nodes = blocks[name_of[u.rsplit(".", 1)[0]]]
            edge_flows.update({(n, COORDINATOR): f / len(nodes) for n in nodes})
        else:
            senders, receivers = blocks[data["src"]], blocks[data["dst"]]
            share = f / (len(senders) * len(receivers))
            if share > FLOW_EPS:
                edge_flows.update({(a, b): share for a in senders for b in receivers})
    return MaxFlowResult(value, edge_flows, node_flows, graph, cut_side)
