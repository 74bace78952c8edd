"""The reference simulator: every message to a node is an event (the simulator before issue 21).

Sits beside engine.py as its oracle: same placement, scheduler, cost model and workload in,
same `SimResult` out. Where `Simulator` keeps a message to a busy node in that node's pending
heap and takes it in when the step ends, `ReferenceSimulator` pops it off the global heap as an
`AT_NODE` event the moment it lands: appended to the waiting line, and an idle node starts a
step at once. That is the plain reading of the execution model, and it costs one event per
message (a 60-hop route makes ~60 per decode token). Both give every message and step end the
same key (arrival time, sequence number), so they run the same steps in the same order and
their results are identical but for `events`; the equivalence tests and the before/after rows
of `make bench-sim` hold the fast engine to that.
"""

from __future__ import annotations

import heapq
from typing import Any

from helix_jax.sim.cluster import SimNode
from helix_jax.sim.engine import Simulator
from helix_jax.sim.stepping import AT_NODE, NodeStepper


class ReferenceSimulator(Simulator):
    """`Simulator` with one event per message to a node (module docstring), on the plain step
    path (stepping.py), not the hot path's inlined copy of it."""

    _step_done = NodeStepper._step_done
    _wake = NodeStepper._wake

    def _deliver(self, node: SimNode, arrive: float, seq: int, entry_layer: int, prefill: list, decode: list, context: int | None) -> None:
        heapq.heappush(self._heap, (arrive, seq, AT_NODE, node, prefill + decode))

    def _at_node(self, node: SimNode, reqs: Any, now: float, seq: int) -> None:
        for req in reqs:  # one by one: each request's entry layer read off its own route
            req.node_enter_s = now
            node.waiting.append(req)
        if not node.busy:
            self._start_step(node, now)
