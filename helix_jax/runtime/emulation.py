"""Emulated pacing (`deploy --emulate`): make a narrow model run at a real cluster's speed.

Sits inside the runtime: workers pace each batch step and each activation transfer; the
coordinator paces its own links. The topology's model (e.g. LLaMA-2-70B) and GPU types give
the times via the cost model (`CostModel.layer_step_seconds`, summed over the layers as its
`uniform_step_seconds` does) and the topology's links (the cost model's `FifoLink`), while
the worker actually computes a narrow stand-in (e.g. `tiny-80`). Every emulated duration is
multiplied by one uniform `time_scale` N, so this machine's CPU is not the bottleneck; the
client divides measured figures by N again (the coordinator tells it N).

A link carries one transfer at a time (FIFO): a message of `b` bytes that is ready at `t`
starts at `max(t, link_free)`, holds the link for `b / bandwidth` and arrives `latency` later
(costmodel/links.py owns that arithmetic; the simulator uses the same links).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from helix_jax.costmodel import CostModel
from helix_jax.costmodel.links import FifoLink
from helix_jax.costmodel.steps import entry_layer_segments, uniform_step_seconds
from helix_jax.topology import Topology, topology_from_dict
from helix_jax.workload import WorkloadShape


@dataclasses.dataclass(frozen=True)
class EmulationSpec:
    """What a worker needs to pace itself; travels in the `assign` message."""

    time_scale: float
    topology_raw: Mapping[str, Any]  # the topology file's JSON, rebuilt on the worker
    base_dir: str
    # Multiplies the emulated KV budgets. A benchmark whose requests are shorter than the cost
    # model's workload sets it to (its request tokens / the workload's resident KV tokens) so the
    # ledger admits as many residents per node as the capacity model assumes.
    kv_scale: float = 1.0
    # the request shape the placement was planned for (Placement.workload): the step times and
    # KV budgets the workers emulate are the cost model's for this shape, as the planner's were
    workload: Mapping[str, float] | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "time_scale": self.time_scale,
            "topology": dict(self.topology_raw),
            "base_dir": self.base_dir,
            "kv_scale": self.kv_scale,
            "workload": dict(self.workload) if self.workload else None,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> "EmulationSpec":
        return cls(float(raw["time_scale"]), raw["topology"], str(raw["base_dir"]), float(raw.get("kv_scale", 1.0)), raw.get("workload"))

    @classmethod
    def for_topology(
        cls, topology: Topology, time_scale: float, kv_scale: float = 1.0, workload: WorkloadShape | None = None
    ) -> "EmulationSpec":
        if not topology.source_path:
            raise ValueError("emulation needs a topology loaded from a file")
        path = Path(topology.source_path)
        return cls(
            time_scale,
            json.loads(path.read_text()),
            str(path.parent.resolve()),
            kv_scale,
            workload.to_dict() if workload is not None else None,
        )

    def workload_shape(self) -> WorkloadShape:
        return WorkloadShape.from_dict(dict(self.workload) if self.workload else None)

    def topology(self) -> Topology:
        return topology_from_dict(dict(self.topology_raw), base_dir=Path(self.base_dir))


class LinkPacer:
    """FIFO per outgoing link of one endpoint (`src`); answers when a message may be delivered."""

    def __init__(self, topology: Topology, src: str, time_scale: float) -> None:
        self.topology, self.src, self.time_scale = topology, src, time_scale
        self._links: dict[str, FifoLink] = {}

    def deliver_at(self, dst: str, num_tokens: int, now: float) -> float:
        """Wall time at which a message of `num_tokens` tokens ready `now` reaches `dst`."""
        link = self._links.get(dst)
        if link is None:
            link = self._links[dst] = FifoLink.between(
                self.topology.link(self.src, dst), self.topology.model, self.src, dst, self.time_scale
            )
        return link.send(now, num_tokens)


@dataclasses.dataclass(frozen=True)
class LayerLoad:
    """Work of one batch at one layer: prefill tokens, decode rows and their KV context."""

    prompt_tokens: int
    decode_seqs: int
    decode_context_tokens: int


def layer_loads(items: Sequence[Any], start_layer: int, end_layer: int) -> list[LayerLoad]:
    """Per layer of `[start_layer, end_layer)`: the LayerLoad of a batch of StepInputs.

    An item loads every layer from its `run_start_layer` on: one pass over the items groups
    them by entry layer, the cost model's `entry_layer_segments` adds them up (O(items + layers)).
    """
    by_entry: dict[int, list[int]] = {}  # entry layer -> [prompt tokens, decode rows, their context]
    for item in items:
        entry = max(item.run_start_layer, start_layer)
        if entry >= end_layer:
            continue
        load = by_entry.setdefault(entry, [0, 0, 0])
        n = item.num_tokens
        if n > 1:
            load[0] += n
        else:
            load[1] += 1
            load[2] += item.position + 1
    segments = entry_layer_segments(by_entry, end_layer)
    first = segments[0][0] if segments else end_layer
    loads = [LayerLoad(0, 0, 0)] * (first - start_layer)
    for begin, upto, prompt, decode, context in segments:
        loads += [LayerLoad(prompt, decode, context)] * (upto - begin)
    return loads


class ComputePacer:
    """Wall seconds one batch step would take on the node's GPU type, times `time_scale`."""

    def __init__(
        self, topology: Topology, node: str, time_scale: float, kv_scale: float = 1.0, workload: WorkloadShape | None = None
    ) -> None:
        self.cost = CostModel(topology, workload)
        self.gpu = topology.node(node).gpu
        self._layer_step_seconds = functools.partial(self.cost.layer_step_seconds, self.gpu)
        self.time_scale, self.kv_scale = time_scale, kv_scale

    def step_seconds(self, loads: Sequence[LayerLoad]) -> float:
        total = 0.0
        for load in loads:
            if load.prompt_tokens or load.decode_seqs:
                total += uniform_step_seconds(self._layer_step_seconds, 1, load.prompt_tokens, load.decode_seqs, load.decode_context_tokens)
        return total * self.time_scale

    def max_decode_batch(self, num_layers_held: int) -> int:
        return self.cost.max_decode_batch(self.gpu, num_layers_held)

    def kv_budget_token_layers(self, num_layers_held: int) -> int:
        return max(1, int(self.cost.kv_budget_token_layers(self.gpu, num_layers_held) * self.kv_scale))


class DelayedSends:
    """Messages held until their emulated delivery time; earliest first, FIFO among equals."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._heap)

    @property
    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def push(self, due: float, dst: str, msg: Any) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), dst, msg))

    def fire(self, now: float, send: Callable[[str, Any], None]) -> None:
        """`send(dst, msg)` every message due by `now`."""
        while self._heap and self._heap[0][0] <= now:
            _, _, dst, msg = heapq.heappop(self._heap)
            send(dst, msg)
