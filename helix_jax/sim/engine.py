"""Discrete-event simulator: the same `Scheduler` the coordinator uses, driving simulated nodes.

Sits after the scheduler in the data flow (placement -> scheduler -> **simulator** -> metrics)
and takes every duration from the cost model. One run, step by step:

1. Requests enter the scheduler's FIFO queue: offline, the queue is topped up to
   `offline_queue_depth` after every change (closed loop); online, at arrival events.
2. `admit_ready()` fixes each admitted request's route and reserves its KV; the coordinator
   sends the prompt's token ids to the first hop (a link transfer).
3. A node that is idle with work waiting runs one continuous-batching step (cluster.py); at the
   step's end each request moves on: prompt activations or one decode token's activations to
   its next hop, or one token id back to the coordinator after the last hop. Messages of one
   step to one destination travel together.
4. At the coordinator a token is "sampled": the first token sets TTFT; a request that has all
   its output tokens completes (KV released, `finish`), any other starts its next decode round
   trip along the same route (`on_decode_tokens` adds the load, one call per batch).
5. The run ends at `duration_s`; metrics count `[warmup_s, duration_s)`. TTFT runs from the
   arrival (online) or from admission (offline, where the queue only keeps the loop closed).

Events are per step, not per message (stepping.py): a message to a busy node waits in that
node's pending heap under the key an event would have had, so the global heap holds step ends,
wake-ups of idle nodes, messages to the coordinator and online arrivals, and the run processes
the same steps in the same order as the message-per-event reference engine (reference.py):
results are identical, only `events` differs. The step path this engine runs is hot_path.py's
(routing by each node's `next_hop` table); the reference runs stepping.py's plain one.

Memory is proportional to requests in flight: finished requests are dropped at once, and
metrics are streaming aggregates with bounded reservoirs.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import random
import time
from typing import Any, Callable, Iterator

from helix_jax.bench.metrics import MetricsCollector
from helix_jax.costmodel import CostModel
from helix_jax.costmodel.links import FifoLink
from helix_jax.placement import Placement
from helix_jax.scheduler import Scheduler
from helix_jax.sim.admission import Admitter
from helix_jax.sim.cluster import SimNode, SimRequest
from helix_jax.sim.config import SimConfig
from helix_jax.sim.hot_path import HotPathStepper
from helix_jax.sim.result import SimResult, build_result
from helix_jax.sim.stepping import ARRIVAL, AT_COORDINATOR, EVENT_KINDS, STEP_DONE, WAKE
from helix_jax.topology import COORDINATOR
from helix_jax.workload import LengthSampler, seeded_arrivals

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 70_000  # allocations between the cyclic collector's young passes during a run


class Simulator(Admitter, HotPathStepper):
    """One simulated run of a placement under a policy (see the module docstring)."""

    def __init__(self, placement: Placement, cost_model: CostModel, lengths: LengthSampler, config: SimConfig):
        self.placement, self.cost, self.lengths, self.config = placement, cost_model, lengths, config
        topo = cost_model.topology
        budgets, self.nodes = {}, {}
        step_functions = {gpu: cost_model.layer_step_function(gpu) for gpu in {topo.node(n).gpu for n in placement.ranges}}
        for name, (start, end) in sorted(placement.ranges.items()):
            gpu = topo.node(name).gpu
            held = end - start
            share = float(placement.extra.get("kv_fraction", {}).get(name, 1.0))  # SLO plans: planned load
            budgets[name] = int(share * cost_model.kv_budget_token_layers(gpu, held))
            self.nodes[name] = SimNode(
                name, end, cost_model.max_prompt_tokens_per_step(gpu), cost_model.max_decode_batch(gpu, held), step_functions[gpu], start
            )
        self.budgets = budgets
        self.scheduler = Scheduler(
            placement, budgets, policy=config.policy, queue_limit=config.queue_limit, min_edge_share=config.min_edge_share, seed=config.seed
        )
        self.metrics = MetricsCollector(config.warmup_s, config.duration_s, config.slo_ttft_ms, config.slo_tpot_ms, seed=config.seed)
        self._links: dict[tuple[str, str], FifoLink] = {}
        self._coordinator_out: dict[str, tuple[FifoLink, SimNode | None]] = {}  # as SimNode.out_links
        self._kv_reserved = self.scheduler.ledger.used_view()
        self._length_rng = random.Random(config.seed)
        self._queued: dict[str, tuple[int, int, float]] = {}  # rid -> (prompt, output, arrival_s)
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._wakes = itertools.count()  # tie-break of wake-ups that share a message's key
        self._ids = itertools.count()
        self._observe_queue = config.policy == "shortest-queue"
        self._observe_latency = config.policy == "swarm"
        self.submitted = self.admitted = self.completed = 0
        self.rejected_overloaded = self.rejected_too_large = 0
        self.peak_in_flight = 0
        self.events = 0
        self.events_by_kind: dict[str, int] = {}
        self.stale_wakes = 0  # wake-ups superseded by an earlier one (not counted as events)
        self._in_flight_area = 0.0  # integral of requests in flight over the window
        self._in_flight_since = config.warmup_s

    # ---- plumbing ----
    def _push(self, t: float, kind: int, a: Any = None, b: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, a, b))

    def _account_in_flight(self, now: float) -> None:
        """Call before the number in flight changes: integrates it over the window."""
        t = min(now, self.config.duration_s)
        if t > self._in_flight_since:
            self._in_flight_area += self.scheduler.in_flight * (t - self._in_flight_since)
            self._in_flight_since = t

    # ---- 4. coordinator ----
    def _at_coordinator(self, reqs: list[SimRequest], now: float) -> None:
        metrics, sched = self.metrics, self.scheduler
        metrics.on_output_tokens(now, len(reqs))
        groups: dict[str, list] = {}
        decoding: list[str] = []  # their decode tokens go to the scheduler in one call, in order
        finished = False
        for req in reqs:
            generated = req._generated + 1  # `req.generated += 1`, without the property's two calls
            req._generated = generated
            req.context_tokens = req.prompt_tokens + generated
            if generated == 1:
                req.first_token_s = now
                metrics.on_first_token(now, now - req.arrival_s, req.prompt_tokens)
            if generated >= req.output_tokens:
                metrics.on_complete(now, req.first_token_s - req.arrival_s, req.first_token_s, req.output_tokens)
                kv_tokens = req.prompt_tokens + generated - 1
                for hop in req.route:
                    node = self.nodes[hop.node]
                    node.kv_entries -= kv_tokens * hop.num_layers
                    next_node = node.next_hop.pop(req, node.main_next)
                    left = node.next_counts[next_node] - 1
                    if left:
                        node.next_counts[next_node] = left
                    else:
                        del node.next_counts[next_node]
                self._account_in_flight(now)
                sched.finish(req.rid)
                self.completed += 1
                finished = True
                continue
            decoding.append(req.rid)
            req.path = iter(req.next_nodes)  # hop 0 again
            first = req.route[0].node
            g = groups.get(first)
            if g is None:
                groups[first] = [[], [req], req.context_tokens]
            else:
                g[1].append(req)
                g[2] += req.context_tokens
        if decoding:
            sched.on_decode_tokens(decoding)
        self._send(now, COORDINATOR, self._coordinator_out, 0, groups)
        if finished:
            self._admit(now)

    # ---- the loop ----
    def _arrivals(self) -> Iterator[float]:
        if self.config.arrival_times_s is not None:
            return iter(self.config.arrival_times_s)
        return seeded_arrivals(self.config.rate_per_s, self.config.arrival_counts, self.config.arrival_interval_s, self.config.seed)

    def run(self, progress: Callable[[float], None] | None = None) -> SimResult:
        # The run allocates millions of short-lived lists and tuples and makes no reference
        # cycles: the cyclic collector's young-generation passes only cost time (~10% at 200
        # GPUs), so they run 100x less often until the run ends.
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], GC_YOUNG_THRESHOLD), *thresholds[1:])
        try:
            return self._run(progress)
        finally:
            gc.set_threshold(*thresholds)

    def _run(self, progress: Callable[[float], None] | None) -> SimResult:
        wall_start = time.perf_counter()
        end = self.config.duration_s
        arrivals: Iterator[float] | None = None
        if self.config.mode == "online":
            arrivals = self._arrivals()
            first = next(arrivals, None)
            if first is not None:
                self._push(first, ARRIVAL)
        else:
            self._admit(0.0)
        heap, pop = self._heap, heapq.heappop
        step_done, wake = self._step_done, self._wake
        steps_done = 0  # STEP_DONE events (most of them), counted apart from the others' `counts`
        counts = [0] * len(EVENT_KINDS)
        while heap:
            now, seq, kind, a, b = pop(heap)
            if now >= end:
                break
            if kind == STEP_DONE:
                step_done(a, now, seq)
                steps_done += 1
                if progress is not None and not steps_done & 0x3FFF:
                    progress(now)
                continue
            if kind == WAKE:
                if not wake(b, now, seq):
                    continue
            elif kind == AT_COORDINATOR:
                self._at_coordinator(a, now)
            elif kind == ARRIVAL:
                if self._submit(now):
                    self._admit(now)
                assert arrivals is not None  # arrivals exist only online
                upcoming = next(arrivals, None)
                if upcoming is not None:
                    self._push(upcoming, ARRIVAL)
            else:
                self._at_node(a, b, now, seq)
            counts[kind] += 1
        counts[STEP_DONE] = steps_done
        self.events = sum(counts)
        self.events_by_kind = dict(zip(EVENT_KINDS, counts))
        self._account_in_flight(end)
        if progress is not None:
            progress(end)
        return build_result(self, time.perf_counter() - wall_start)


def simulate(
    placement: Placement, cost_model: CostModel, lengths: LengthSampler, config: SimConfig, progress: Callable[[float], None] | None = None
) -> SimResult:
    """Run one simulation (see `Simulator`)."""
    return Simulator(placement, cost_model, lengths, config).run(progress)
