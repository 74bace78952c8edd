"""Whether a cluster can hold the model at all, before any placement is searched for.

`check_feasible` raises the one clear InfeasibleError that names the GPUs and how many layers
each can hold; `within_cap` says whether a placement stays inside the planner's search space.
Called by plan.py (and the baselines through it); reads the topology and the cost model only.
"""

from __future__ import annotations

from helix_jax.costmodel import CostModel
from helix_jax.errors import InfeasibleError
from helix_jax.topology import Topology


def check_feasible(topology: Topology, cost_model: CostModel, fill_memory: bool = False) -> None:
    """Raise InfeasibleError when no composition of the nodes can hold every layer once, each
    node within `max_layers` (or, with `fill_memory`, within `memory_max_layers`: sp)."""
    model = topology.model
    limit = cost_model.memory_max_layers if fill_memory else cost_model.max_layers
    per_type = {}
    for node in topology.nodes:
        per_type.setdefault(node.gpu, [0, limit(node.gpu)])[0] += 1
    detail = ", ".join(f"{n} x {gpu} (max {top} layers each)" for gpu, (n, top) in sorted(per_type.items()))
    if all(top == 0 for _, top in per_type.values()):
        raise InfeasibleError(
            f"no GPU in this cluster can hold one layer of {model.name} "
            f"({model.weight_bytes_per_layer / 1e9:.2f} GB of weights per layer): {detail}"
        )
    total = sum(n * top for n, top in per_type.values())
    if total < model.num_layers:
        hard = sum(cost_model.memory_max_layers(node.gpu) for node in topology.nodes)
        beyond = f"; filling memory past that cap (--method sp) would fit {hard}" if not fill_memory and hard >= model.num_layers else ""
        where = "with memory filled with weights" if fill_memory else "with weights in half of each GPU's memory"
        raise InfeasibleError(
            f"the cluster holds at most {total} of the {model.num_layers} layers of {model.name} "
            f"{where}: {detail}; add nodes or use a smaller model{beyond}"
        )


def within_cap(topology: Topology, cost_model: CostModel, ranges: dict[str, tuple[int, int]]) -> bool:
    """Whether every node holds at most the planner's `max_layers` (the MILP's search space)."""
    return all(e - s <= cost_model.max_layers(topology.node(n).gpu) for n, (s, e) in ranges.items())
