"""What the parts of one simulated run share: the attributes `Simulator.__init__` sets.

Sits under the engine's parts (admission.py, stepping.py, engine.py): each is a mixin of
`Simulator` and reads this state directly (the hot path has no object in between); this base
names it once, with its types, and the methods one part calls on another.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Mapping

from helix_jax.bench.metrics import MetricsCollector
from helix_jax.costmodel import CostModel
from helix_jax.costmodel.links import FifoLink
from helix_jax.placement import Placement
from helix_jax.scheduler import Scheduler
from helix_jax.sim.cluster import SimNode
from helix_jax.sim.config import SimConfig
from helix_jax.workload import LengthSampler


class RunState:
    """Annotations only; `Simulator.__init__` assigns every one."""

    placement: Placement
    cost: CostModel
    lengths: LengthSampler
    config: SimConfig
    scheduler: Scheduler
    metrics: MetricsCollector
    nodes: dict[str, SimNode]
    budgets: dict[str, int]
    _links: dict[tuple[str, str], FifoLink]
    _coordinator_out: dict[str, tuple[FifoLink, SimNode | None]]  # as SimNode.out_links
    _kv_reserved: Mapping[str, int]  # the ledger's reservations per node, live
    _length_rng: random.Random
    _queued: dict[str, tuple[int, int, float]]  # rid -> (prompt, output, arrival_s)
    _heap: list[tuple]
    _seq: itertools.count
    _wakes: itertools.count
    _ids: itertools.count
    _observe_queue: bool
    _observe_latency: bool
    submitted: int
    admitted: int
    completed: int
    rejected_overloaded: int
    rejected_too_large: int
    peak_in_flight: int
    stale_wakes: int

    def _send(self, now: float, src: str, out: dict, entry_layer: int, groups: dict[str, list]) -> None:
        raise NotImplementedError  # stepping.py

    def _account_in_flight(self, now: float) -> None:
        raise NotImplementedError  # engine.py

    def _at_node(self, node: SimNode, message: Any, now: float, seq: int) -> None:
        raise NotImplementedError("messages to nodes are events only in the reference simulator")
