"""The frozen cluster every later stage reads: GPU types, nodes, links, `Topology`.

Sits after the file boundary (file -> **topology** -> cost model -> solver -> ...): load.py
builds these from a validated file; the cost model, the solver, the scheduler, the runtime and
the simulator only read them. Plain frozen dataclasses; touches nothing but the model config
and the errors.
"""

from __future__ import annotations

import dataclasses
import functools

from helix_jax.errors import TopologyError
from helix_jax.modelconfig import ModelConfig

COORDINATOR = "coordinator"


@dataclasses.dataclass(frozen=True)
class GpuType:
    """One kind of compute node. `num_gpus` > 1 means a multi-GPU node (e.g. "L4x2") that
    holds its layers with tensor parallelism: memory, bandwidth and FLOPs add up."""

    name: str
    memory_bytes: float
    memory_bandwidth_bytes_per_s: float
    tflops: float  # dense fp16/bf16 tensor TFLOP/s of the whole node
    num_gpus: int = 1
    nic_bandwidth_bytes_per_s: float | None = None  # None: links alone limit traffic
    max_layers: int | None = None  # explicit override of the cost model
    capacity_tokens_per_s: tuple[float, ...] | None = None  # tokens/s holding 1..N layers
    profile_path: str | None = None  # measured latency profile (helix-jax profile)
    max_prompt_tokens_per_step: int | None = None  # prefill chunk budget per step; None: the cost model's


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    gpu: str
    region: str | None = None
    host: str | None = None
    price_per_hour: float | None = None  # rent of this node (pools for `plan --shop`)


@dataclasses.dataclass(frozen=True)
class Link:
    bandwidth_bytes_per_s: float
    latency_ms: float


@dataclasses.dataclass(frozen=True)
class Topology:
    """A validated cluster: model, GPU types in use, compute nodes, and every directed link."""

    name: str
    model: ModelConfig
    gpu_types: dict[str, GpuType]
    nodes: tuple[Node, ...]
    coordinator: Node
    links: dict[tuple[str, str], Link]  # every ordered pair of distinct endpoints
    source_path: str | None = None

    def __hash__(self) -> int:  # dict fields: hash by identity-ish content
        return hash((self.name, self.model, self.nodes))

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @functools.cached_property
    def _node_by_name(self) -> dict[str, Node]:  # node() is called per node by the planner: O(1), not O(nodes)
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        found = self._node_by_name.get(name)
        if found is not None:
            return found
        if name == COORDINATOR:
            return self.coordinator
        raise TopologyError(f"unknown node {name!r}")

    def gpu_of(self, node_name: str) -> GpuType:
        return self.gpu_types[self.node(node_name).gpu]

    def link(self, src: str, dst: str) -> Link:
        try:
            return self.links[(src, dst)]
        except KeyError:
            raise TopologyError(f"no link from {src!r} to {dst!r}") from None

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted({n.region or "default" for n in self.nodes}))
