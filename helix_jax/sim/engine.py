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
   trip along the same route (`on_decode_token` adds the load).
5. The run ends at `duration_s`; metrics count `[warmup_s, duration_s)`. TTFT runs from the
   arrival (online) or from admission (offline, where the queue only keeps the loop closed).

Memory is proportional to requests in flight: finished requests are dropped at once, and
metrics are streaming aggregates with bounded reservoirs. Events live in one `heapq`.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import random
import time
from typing import Any, Callable, Iterator

from helix_jax.bench.metrics import MetricsCollector
from helix_jax.bench.workload import LengthSampler, seeded_arrivals
from helix_jax.costmodel import CostModel
from helix_jax.errors import OverloadedError, RequestError
from helix_jax.placement import Placement
from helix_jax.scheduler import RequestSpec, Scheduler
from helix_jax.sim.cluster import SimLink, SimNode, SimRequest
from helix_jax.sim.config import SimConfig
from helix_jax.sim.result import NodeStats, SimResult, placement_max_flow
from helix_jax.topology import COORDINATOR

log = logging.getLogger(__name__)

_ARRIVAL, _AT_NODE, _STEP_DONE, _AT_COORDINATOR = range(4)


class Simulator:
    """One simulated run of a placement under a policy (see the module docstring)."""

    def __init__(self, placement: Placement, cost_model: CostModel, lengths: LengthSampler,
                 config: SimConfig):
        self.placement, self.cost, self.lengths, self.config = placement, cost_model, lengths, config
        topo = cost_model.topology
        budgets, self.nodes = {}, {}
        for name, (start, end) in sorted(placement.ranges.items()):
            gpu = topo.node(name).gpu
            held = end - start
            share = float(placement.extra.get("kv_fraction", {}).get(name, 1.0))  # SLO plans: planned load
            budgets[name] = int(share * cost_model.kv_budget_token_layers(gpu, held))
            self.nodes[name] = SimNode(name, end, cost_model.max_prompt_tokens_per_step(gpu),
                                       cost_model.max_decode_batch(gpu, held),
                                       functools.partial(cost_model.layer_step_seconds, gpu))
        self.budgets = budgets
        self.scheduler = Scheduler(placement, budgets, policy=config.policy, queue_limit=config.queue_limit,
                                   min_edge_share=config.min_edge_share, seed=config.seed)
        self.metrics = MetricsCollector(config.warmup_s, config.duration_s, config.slo_ttft_ms,
                                        config.slo_tpot_ms, seed=config.seed)
        self._links: dict[tuple[str, str], SimLink] = {}
        self._length_rng = random.Random(config.seed)
        self._queued: dict[str, tuple[int, int, float]] = {}  # rid -> (prompt, output, arrival_s)
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self._observe_queue = config.policy == "shortest-queue"
        self._observe_latency = config.policy == "swarm"
        self.submitted = self.admitted = self.completed = 0
        self.rejected_overloaded = self.rejected_too_large = 0
        self.peak_in_flight = 0
        self.events = 0
        self._in_flight_area = 0.0  # integral of requests in flight over the window
        self._in_flight_since = config.warmup_s

    # ---- plumbing ----
    def _push(self, t: float, kind: int, a: Any = None, b: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, a, b))

    def _link(self, src: str, dst: str) -> SimLink:
        link = self._links.get((src, dst))
        if link is None:
            spec = self.cost.topology.link(src, dst)
            bytes_per_token = self.cost.bytes_per_vector(src, dst)
            link = self._links[(src, dst)] = SimLink(spec.latency_ms / 1e3, spec.bandwidth_bytes_per_s,
                                                     bytes_per_token)
        return link

    def _send(self, now: float, src: str, groups: dict[str, list]) -> None:
        """groups: destination -> [tokens, requests]; one message per destination."""
        for dst, (tokens, reqs) in groups.items():
            arrive = self._link(src, dst).send(now, tokens)
            if dst == COORDINATOR:
                self._push(arrive, _AT_COORDINATOR, reqs)
            else:
                self._push(arrive, _AT_NODE, dst, reqs)

    def _account_in_flight(self, now: float) -> None:
        """Call before the number in flight changes: integrates it over the window."""
        t = min(now, self.config.duration_s)
        if t > self._in_flight_since:
            self._in_flight_area += self.scheduler.in_flight * (t - self._in_flight_since)
            self._in_flight_since = t

    # ---- 1. arrivals and admission ----
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
            for adm in admitted:
                prompt, output, arrival = self._queued.pop(adm.request_id)
                # Offline, the queue is an artefact of the closed loop: latency starts at admission.
                req = SimRequest(adm.request_id, prompt, output, adm.route, now if offline else arrival)
                g = groups.setdefault(adm.route[0].node, [0, []])
                g[0] += prompt
                g[1].append(req)
            self.admitted += len(admitted)
            self.peak_in_flight = max(self.peak_in_flight, sched.in_flight)
            self._send(now, COORDINATOR, groups)
            if not offline:
                return

    # ---- 3. nodes ----
    def _start_step(self, node: SimNode, now: float) -> None:
        if self._observe_queue:
            self.scheduler.on_node_queue(node.name, len(node.waiting))
        self._push(now + node.form_batch(), _STEP_DONE, node)

    def _step_done(self, node: SimNode, now: float) -> None:
        batch = node.finish_batch()
        reserved = self.scheduler.ledger.used(node.name)
        if node.kv_entries > reserved:  # checked after every step, prompt-chunk-only ones too
            raise RuntimeError(f"simulated KV on {node.name} ({node.kv_entries} token-layers) exceeds "
                               f"its reservation ({reserved})")
        if not batch:  # only prompt chunks ran: nothing moves on yet
            if node.waiting:
                self._start_step(node, now)
            return
        if self._observe_latency:
            waited = sum(now - r.node_enter_s for r in batch) / len(batch)
            self.scheduler.on_hop_latency(node.name, waited)
        groups: dict[str, list] = {}
        for req in batch:
            if req.hop_index + 1 < len(req.route):
                tokens = 1 if req.generated else req.prompt_tokens
                req.hop_index += 1
                dst = req.route[req.hop_index].node
            else:
                tokens, dst = 1, COORDINATOR
            g = groups.get(dst)
            if g is None:
                g = groups[dst] = [0, []]
            g[0] += tokens
            g[1].append(req)
        self._send(now, node.name, groups)
        if node.waiting:
            self._start_step(node, now)

    def _at_node(self, name: str, reqs: list[SimRequest], now: float) -> None:
        node = self.nodes[name]
        for req in reqs:
            req.node_enter_s = now
        node.waiting.extend(reqs)
        if not node.busy:
            self._start_step(node, now)

    # ---- 4. coordinator ----
    def _at_coordinator(self, reqs: list[SimRequest], now: float) -> None:
        metrics, sched = self.metrics, self.scheduler
        metrics.on_output_tokens(now, len(reqs))
        groups: dict[str, list] = {}
        finished = False
        for req in reqs:
            req.generated += 1
            if req.generated == 1:
                req.first_token_s = now
                metrics.on_first_token(now, now - req.arrival_s, req.prompt_tokens)
            if req.generated >= req.output_tokens:
                metrics.on_complete(now, req.first_token_s - req.arrival_s, req.first_token_s,
                                    req.output_tokens)
                kv_tokens = req.prompt_tokens + req.generated - 1
                for hop in req.route:
                    self.nodes[hop.node].kv_entries -= kv_tokens * hop.num_layers
                self._account_in_flight(now)
                sched.finish(req.rid)
                self.completed += 1
                finished = True
                continue
            sched.on_decode_token(req.rid)
            req.hop_index = 0
            first = req.route[0].node
            g = groups.get(first)
            if g is None:
                g = groups[first] = [0, []]
            g[0] += 1
            g[1].append(req)
        self._send(now, COORDINATOR, groups)
        if finished:
            self._admit(now)

    # ---- the loop ----
    def _arrivals(self) -> Iterator[float]:
        if self.config.arrival_times_s is not None:
            return iter(self.config.arrival_times_s)
        return seeded_arrivals(self.config.rate_per_s, self.config.arrival_counts,
                               self.config.arrival_interval_s, self.config.seed)

    def run(self, progress: Callable[[float], None] | None = None) -> SimResult:
        wall_start = time.perf_counter()
        end = self.config.duration_s
        arrivals: Iterator[float] | None = None
        if self.config.mode == "online":
            arrivals = self._arrivals()
            first = next(arrivals, None)
            if first is not None:
                self._push(first, _ARRIVAL)
        else:
            self._admit(0.0)
        heap, pop = self._heap, heapq.heappop
        events = 0
        while heap and heap[0][0] < end:
            now, _, kind, a, b = pop(heap)
            events += 1
            if kind == _AT_NODE:
                self._at_node(a, b, now)
            elif kind == _STEP_DONE:
                self._step_done(a, now)
            elif kind == _AT_COORDINATOR:
                self._at_coordinator(a, now)
            else:
                if self._submit(now):
                    self._admit(now)
                assert arrivals is not None  # arrivals exist only online
                upcoming = next(arrivals, None)
                if upcoming is not None:
                    self._push(upcoming, _ARRIVAL)
            if progress is not None and not events & 0x3FFF:
                progress(now)
        self.events = events
        self._account_in_flight(end)
        if progress is not None:
            progress(end)
        return self._result(time.perf_counter() - wall_start)

    def _result(self, wall_s: float) -> SimResult:
        duration = self.config.duration_s
        nodes = tuple(NodeStats(
            name=n.name, layers=self.placement.ranges[n.name], steps=n.steps,
            busy_fraction=min(1.0, n.busy_s / duration),
            mean_decode_batch=n.decode_seqs_total / n.steps if n.steps else 0.0,
            max_decode_seqs=n.max_decode_seqs, kv_budget_token_layers=self.budgets[n.name],
        ) for n in self.nodes.values())
        return SimResult(
            method=self.placement.method, policy=self.config.policy, config=self.config,
            metrics=self.metrics.summary(), max_flow_tokens_per_s=placement_max_flow(self.placement),
            submitted=self.submitted, admitted=self.admitted, completed=self.completed,
            rejected_overloaded=self.rejected_overloaded, rejected_too_large=self.rejected_too_large,
            queued_at_end=self.scheduler.queue_length, in_flight_at_end=self.scheduler.in_flight,
            peak_in_flight=self.peak_in_flight,
            mean_in_flight=self._in_flight_area / (duration - self.config.warmup_s),
            events=self.events, wall_s=wall_s, nodes=nodes)


def simulate(placement: Placement, cost_model: CostModel, lengths: LengthSampler, config: SimConfig,
             progress: Callable[[float], None] | None = None) -> SimResult:
    """Run one simulation (see `Simulator`)."""
    return Simulator(placement, cost_model, lengths, config).run(progress)
