"""Placement: the solver's only product, and what the scheduler and runtime consume.

Owns: `Placement` (a layer range per node plus the max-flow on every directed edge), its
JSON form, and `Hop` (one step of a route: a node and the layer sub-range it runs).

Conventions:
* Ranges are half-open `[start, end)` over `0..num_layers`.
* Flow edges join "coordinator" and node names. `coordinator -> j` needs `start_j == 0`;
  `i -> coordinator` needs `end_i == num_layers`; `i -> j` needs `end_i == start_j`, or
  with partial inference `start_j <= end_i < end_j`, and then j runs only `[end_i, end_j)`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from helix_jax.errors import HelixError, PlacementError
from helix_jax.jsonfile import read_json_file
from helix_jax.topology import COORDINATOR
from helix_jax.workload.shape import WorkloadShape


@dataclasses.dataclass(frozen=True)
class FlowEdge:
    src: str
    dst: str
    tokens_per_s: float


@dataclasses.dataclass(frozen=True)
class Hop:
    """One step of a route: `node` runs layers `[start_layer, end_layer)`."""

    node: str
    start_layer: int
    end_layer: int

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer


@dataclasses.dataclass(frozen=True)
class Placement:
    topology_name: str
    num_layers: int
    ranges: dict[str, tuple[int, int]]  # node -> [start, end); nodes holding nothing are absent
    flows: tuple[FlowEdge, ...] = ()
    method: str = "helix"
    objective_tokens_per_s: float = 0.0
    upper_bound_tokens_per_s: float | None = None
    partial_inference: bool = True
    status: str = "unknown"  # optimal | feasible | time_limit | heuristic | baseline
    solve_seconds: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    workload: WorkloadShape | None = None  # the request shape its capacities assume (None: not recorded)

    def __hash__(self) -> int:
        return hash((self.topology_name, tuple(sorted(self.ranges.items())), self.flows))

    # ---- queries used by the scheduler and the runtime ----
    def range_of(self, node: str) -> tuple[int, int]:
        try:
            return self.ranges[node]
        except KeyError:
            raise PlacementError(f"node {node!r} holds no layers in this placement") from None

    def can_hand_off(self, src: str, dst: str) -> bool:
        """Whether activations may flow src -> dst under this placement's rules."""
        if src == dst:
            return False
        if src == COORDINATOR:
            return dst in self.ranges and self.ranges[dst][0] == 0
        if src not in self.ranges:
            return False
        src_end = self.ranges[src][1]
        if dst == COORDINATOR:
            return src_end == self.num_layers
        if dst not in self.ranges:
            return False
        start, end = self.ranges[dst]
        if self.partial_inference:
            return start <= src_end < end
        return src_end == start

    def hop_after(self, prev_end_layer: int, node: str) -> Hop:
        """The hop `node` runs when it receives activations computed up to `prev_end_layer`."""
        start, end = self.range_of(node)
        if not (start <= prev_end_layer < end):
            raise PlacementError(f"node {node!r} holds [{start}, {end}) and cannot continue from layer {prev_end_layer}")
        return Hop(node, prev_end_layer, end)

    def route_hops(self, nodes: Iterable[str]) -> tuple[Hop, ...]:
        """Hops of a route given as a node sequence (coordinator excluded)."""
        hops, layer = [], 0
        for node in nodes:
            hop = self.hop_after(layer, node)
            hops.append(hop)
            layer = hop.end_layer
        if layer != self.num_layers:
            raise PlacementError(f"route {list(nodes)} ends at layer {layer}, not {self.num_layers}")
        return tuple(hops)

    def out_flows(self, src: str) -> list[FlowEdge]:
        return [e for e in self.flows if e.src == src]

    def node_flow(self, node: str) -> float:
        return sum(e.tokens_per_s for e in self.flows if e.dst == node)

    # ---- JSON ----
    def to_dict(self) -> dict[str, Any]:
        return {
            "topology": self.topology_name,
            "num_layers": self.num_layers,
            "method": self.method,
            "status": self.status,
            "partial_inference": self.partial_inference,
            "objective_tokens_per_s": self.objective_tokens_per_s,
            "upper_bound_tokens_per_s": self.upper_bound_tokens_per_s,
            "solve_seconds": self.solve_seconds,
            "nodes": {n: {"start_layer": s, "end_layer": e} for n, (s, e) in sorted(self.ranges.items())},
            "flows": [{"from": f.src, "to": f.dst, "tokens_per_s": f.tokens_per_s} for f in self.flows],
            **({"workload": self.workload.to_dict()} if self.workload is not None else {}),
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> "Placement":
        if not isinstance(raw, dict):
            raise PlacementError(f"a placement must be a JSON object, got {type(raw).__name__}")
        if not isinstance(raw.get("extra", {}), dict):
            raise PlacementError(f"placement's extra must be an object, got {raw['extra']!r}")
        extra = dict(raw.get("extra", {}))
        shape = raw.get("workload", extra.pop("workload", None))  # files before the field: extra.workload
        try:
            workload = None if shape is None else WorkloadShape.from_dict(shape)
        except HelixError as exc:
            raise PlacementError(f"placement's workload is malformed: {exc}") from None
        try:
            nodes = raw["nodes"]
            ranges = {str(n): (int(v["start_layer"]), int(v["end_layer"])) for n, v in nodes.items()}
            flows = tuple(FlowEdge(str(f["from"]), str(f["to"]), float(f["tokens_per_s"])) for f in raw.get("flows", []))
            return cls(
                topology_name=str(raw.get("topology", "")),
                num_layers=int(raw["num_layers"]),
                ranges=ranges,
                flows=flows,
                method=str(raw.get("method", "helix")),
                objective_tokens_per_s=float(raw.get("objective_tokens_per_s", 0.0)),
                upper_bound_tokens_per_s=(None if raw.get("upper_bound_tokens_per_s") is None else float(raw["upper_bound_tokens_per_s"])),
                partial_inference=bool(raw.get("partial_inference", True)),
                status=str(raw.get("status", "unknown")),
                solve_seconds=float(raw.get("solve_seconds", 0.0)),
                extra=extra,
                workload=workload,
            )
        except KeyError as exc:
            raise PlacementError(f"placement is missing the field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise PlacementError(f"placement has a malformed value: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Placement":
        return cls.from_dict(read_json_file(path, "placement", PlacementError))
