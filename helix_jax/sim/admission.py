"""Steps 1-2 of a simulated run: requests enter the scheduler's queue and are admitted.

Sits between the workload and the simulated cluster: length sampler -> **submit / admit** ->
`Scheduler.admit_ready()` -> the prompt's first message (engine.py). A mixin of `Simulator`
(and so of the reference simulator): it uses the engine's scheduler, config, clock and `_send`.

* `_submit`: one request of sampled lengths goes into the scheduler's FIFO queue (rejections
  are counted, never raised: `OverloadedError` past the queue limit, `RequestError` for a
  request no route could ever hold).
* `_admit`: offline, tops the queue up to `offline_queue_depth` and admits until the scheduler
  admits nothing (closed loop); online, admits once. Each admitted request becomes a
  `SimRequest` on its fixed route; prompts to one first hop travel in one message.
"""

from __future__ import annotations

from typing import Any

from helix_jax.errors import OverloadedError, RequestError
from helix_jax.scheduler import RequestSpec
from helix_jax.sim.cluster import SimRequest
from helix_jax.sim.state import RunState
from helix_jax.topology import COORDINATOR


class Admitter(RunState):
    """Submission and admission for `Simulator` (see the module docstring)."""

    # provided by Simulator (declared for the type checker; no values here)
    lengths: Any
    config: Any
    scheduler: Any
    submitted: int
    admitted: int
    rejected_overloaded: int
    rejected_too_large: int
    peak_in_flight: int
    _length_rng: Any
    _ids: Any
    _queued: Any
    _coordinator_out: Any
    _account_in_flight: Any
    _send: Any

    def _submit(self, now: float) -> bool:
        prompt, output = self.lengths.sample(self._length_rng)
        rid = f"r{next(self._ids)}"
        self.submitted += 1
        try:
            self.scheduler.submit(RequestSpec(rid, prompt, output))
        except OverloadedError:
            self.rejected_overloaded += 1
            return False
        except RequestError:
            self.rejected_too_large += 1
            return False
        self._queued[rid] = (prompt, output, now)
        return True

    def _admit(self, now: float) -> None:
        offline = self.config.mode == "offline"
        sched = self.scheduler
        while True:
            if offline:
                guard = 0
                while sched.queue_length < self.config.offline_queue_depth and guard < 1000:
                    self._submit(now)
                    guard += 1
            self._account_in_flight(now)
            admitted = sched.admit_ready()
            if not admitted:
                return
            groups: dict[str, list] = {}
            nodes = self.nodes
            for adm in admitted:
                prompt, output, arrival = self._queued.pop(adm.request_id)
                # Offline, the queue is an artefact of the closed loop: latency starts at admission.
                req = SimRequest(adm.request_id, prompt, output, adm.route, now if offline else arrival)
                for hop, next_node in zip(adm.route, req.next_nodes):
                    node = nodes[hop.node]
                    if not node.main_next:
                        node.main_next = next_node
                    if next_node != node.main_next:
                        node.next_hop[req] = next_node
                    node.next_counts[next_node] = node.next_counts.get(next_node, 0) + 1
                groups.setdefault(adm.route[0].node, [[], [], 0])[0].append(req)
            self.admitted += len(admitted)
            self.peak_in_flight = max(self.peak_in_flight, sched.in_flight)
            self._send(now, COORDINATOR, self._coordinator_out, 0, groups)
            if not offline:
                return
