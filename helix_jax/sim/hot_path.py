"""The per-step engine's hot path: a step's end, its messages, and the node's next step, in one pass.

Sits inside step 3 of a run (stepping.py): **step end -> next hops' messages -> next step**.
`HotPathStepper` overrides `NodeStepper._step_done` and `_wake` with the plain path's algorithm
(`_take_arrived`, `SimNode.finish`, `_send_one` -> `FifoLink.send` -> `_deliver`,
`SimNode.form_batch`) written out in a few functions instead of ten calls, and with shortcuts
that change nothing but the work:

* Routing by table: each node's `next_hop` (request -> next node, kept from admission to
  completion for the requests that do not take `main_next`, the node's first request's next
  node, so the table stays small) replaces advancing every request's `path` iterator. At 200
  GPUs a step moves ~12 decode rows and the 8,000 requests in flight are far apart in memory, so
  reading three objects per row (request, iterator, route tuple) was most of a step's cost; a
  table lookup reads none.
* A node whose requests in flight all go one way (`next_counts` has one key: a node with one
  successor) sends its whole step there without looking any row up.
* A step of one prompt chunk alone, whose prompt has a full chunk left and whose node has no
  decode row waiting, starts the prompt's next chunk directly (what `form_batch` would take); any
  other prompt with chunks left goes straight into the next step, not back through the deque.

Keys, sequence numbers and arithmetic are the plain path's, in the same order, so results are
identical; the reference engine (reference.py) keeps the plain path, and the equality tests
(tests/test_sim_engine.py) hold this one to it.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from typing import Callable, Sequence

from helix_jax.sim.cluster import SimNode, SimRequest
from helix_jax.sim.stepping import AT_COORDINATOR, STEP_DONE, WAKE, NodeStepper, _context_tokens

_heappush = heapq.heappush
_heappop = heapq.heappop
_chain = itertools.chain


class HotPathStepper(NodeStepper):
    """`NodeStepper` with its step path inlined (module docstring)."""

    def _step_done(self, node: SimNode, now: float, seq: int = -1) -> None:
        pending = node.pending
        if pending:
            head = pending[0]
            if head[0] < now or (head[0] == now and head[1] < seq):  # `_take_arrived` and `WaitingLine.add`
                line, observe = node.waiting, self._observe_latency
                while True:
                    arrive, _, entry_layer, prompts, rows, context = _heappop(pending)
                    if observe:
                        for req in _chain(prompts, rows):
                            req.node_enter_s = arrive
                    if prompts:
                        for req in prompts:
                            req.entry_layer = entry_layer
                        line.prefill.extend(prompts)
                    if rows:
                        if context is None:
                            context = sum(map(_context_tokens, rows))
                        line.decode.append((entry_layer, rows, context))
                        line.decode_count += len(rows)
                    if not pending:
                        break
                    head = pending[0]
                    if head[0] > now or (head[0] == now and head[1] > seq):
                        break
        # 1. end the step (`SimNode.finish`): write its KV; a prompt with chunks left stays
        prefill, decode, end = node.batch_prefill, node.batch_decode, node.end_layer
        entry = node._batch_entry
        if entry is not None:
            node.kv_entries += (end - entry) * (len(decode) + node._batch_prompt_tokens)
        else:
            kv = sum((end - e) * len(reqs) for e, reqs, _ in node._batch_segments)
            node.kv_entries += kv + sum((end - req.entry_layer) * req.chunk for req in prefill)
        if node.kv_entries > self._kv_reserved[node.name]:  # checked after every step, prompt-chunk-only ones too
            raise RuntimeError(
                f"simulated KV on {node.name} ({node.kv_entries} token-layers) exceeds its reservation ({self._kv_reserved[node.name]})"
            )
        resume = None
        if prefill:
            if len(prefill) == 1:
                req = prefill[0]
                prefilled = req.prefilled + req.chunk
                if prefilled < req.prompt_tokens:
                    req.prefilled = prefilled
                    budget = node.max_prompt_tokens
                    if not decode and entry is not None and req.prompt_tokens - prefilled >= budget and not node.waiting.decode_count:
                        # the next step is this prompt's next full chunk alone: `_next_step` in short
                        # (the batch's lists, entry layer and context stay as they are)
                        if self._observe_queue:
                            self.scheduler.on_node_queue(node.name, len(node.waiting) + 1)
                        req.chunk = node._batch_prompt_tokens = budget
                        seconds = (end - entry) * node._layer_step_seconds(budget, 0, 0)
                        node.steps += 1
                        node.busy_s += seconds
                        node.prompt_tokens_total += budget
                        _heappush(self._heap, (now + seconds, next(self._seq), STEP_DONE, node, None))
                        return
                    req.chunk = 0
                    resume = req  # back at the head of the line: handed to `_next_step` directly
                    prefill = []
                else:
                    req.chunk = req.prefilled = 0
            else:
                prefill = _prompts_done(node, prefill)
        node.busy = False
        if self._observe_latency and (prefill or decode):
            waited = sum(now - r.node_enter_s for r in itertools.chain(prefill, decode))  # batch order
            self.scheduler.on_hop_latency(node.name, waited / (len(prefill) + len(decode)))
        # 2. each request's next hop (the node's routing table): one message per destination
        next_hop, main = node.next_hop.get, node.main_next
        if len(node.next_counts) == 1:  # every request routed through here goes one way
            if prefill or decode:
                for dst in node.next_counts:
                    self._post(now, node, dst, prefill, decode, node.batch_context_tokens)
        elif decode:
            if len(decode) == 1:
                dst = next_hop(decode[0], main)
                dsts = None
            else:
                dsts = list(map(next_hop, decode, itertools.repeat(main)))
                dst = dsts[0]
                if dsts.count(dst) == len(dsts):
                    dsts = None
            if dsts is not None or len(prefill) > 1:
                groups = _by_destination(prefill, next_hop, main, decode, dsts or [dst] * len(decode), node.batch_context_tokens)
                for to, (prompts, rows, context) in groups.items():
                    self._post(now, node, to, prompts, rows, context)
            elif not prefill:
                self._post(now, node, dst, prefill, decode, node.batch_context_tokens)
            else:
                prompt_dst = next_hop(prefill[0], main)
                if prompt_dst == dst:
                    self._post(now, node, dst, prefill, decode, node.batch_context_tokens)
                else:
                    self._post(now, node, prompt_dst, prefill, [], 0)
                    self._post(now, node, dst, [], decode, node.batch_context_tokens)
        elif prefill:
            if len(prefill) == 1:
                self._post(now, node, next_hop(prefill[0], main), prefill, [], 0)
            else:
                for to, (prompts, rows, context) in _by_destination(prefill, next_hop, main, [], [], 0).items():
                    self._post(now, node, to, prompts, rows, context)
        # 3. the next step at once, or a wake-up at the earliest message on its way
        line = node.waiting
        if resume is not None or line.decode_count or line.prefill:
            self._next_step(node, now, resume)
        else:
            node.batch_prefill, node.batch_decode, node._batch_segments = [], [], []
            if pending:
                arrive, seq = pending[0][:2]
                node.wake_key = (arrive, seq)
                _heappush(self._heap, (arrive, seq, WAKE, next(self._wakes), node))

    def _wake(self, node: SimNode, now: float, seq: int) -> bool:
        """An idle node's earliest pending message has landed; False for a superseded wake-up."""
        if node.busy or node.wake_key != (now, seq):
            self.stale_wakes += 1
            return False
        self._take_arrived(node, now, seq)
        self._next_step(node, now)
        return True

    def _post(self, now: float, src: SimNode, dst: str, prefill: list, decode: list, context: int) -> None:
        """One message from `src`'s step (`_send_one`, `FifoLink.send` and `_deliver` in one)."""
        hop = src.out_links.get(dst)
        link, dst_node = hop if hop is not None else self._out_link(src.out_links, src.name, dst)
        if dst_node is None:
            arrive = link.send(now, len(prefill) + len(decode))
            _heappush(self._heap, (arrive, next(self._seq), AT_COORDINATOR, prefill + decode if prefill else decode, None))
            return
        tokens = len(decode) + sum([req.prompt_tokens for req in prefill]) if prefill else len(decode)
        start = link.free_at_s  # `FifoLink.send`, inlined
        if now > start:
            start = now
        wire_s = tokens * link.bytes_per_token / link.bytes_per_s * link.time_scale
        link.free_at_s = start = start + wire_s
        link.busy_s += wire_s
        link.transfers += 1
        arrive = start + link.latency_s
        seq = next(self._seq)
        _heappush(dst_node.pending, (arrive, seq, src.end_layer, prefill, decode, context))
        if not dst_node.busy:
            key = (arrive, seq)
            wake_key = dst_node.wake_key
            if wake_key is None or key < wake_key:
                dst_node.wake_key = key
                _heappush(self._heap, (arrive, seq, WAKE, next(self._wakes), dst_node))

    def _next_step(self, node: SimNode, now: float, resume: SimRequest | None = None) -> None:
        """Start a step of the waiting line's head (`_start_step` with `SimNode.form_batch`);
        `resume`: a prompt with chunks left, in front of the line's prompts."""
        line = node.waiting
        if self._observe_queue:
            self.scheduler.on_node_queue(node.name, len(line) + (resume is not None))
        node.wake_key = None
        count = line.decode_count
        if not count:
            segments: Sequence[tuple[int, list[SimRequest], int]] = []
            decode: list[SimRequest] = []
            context = 0
        else:
            if count <= node.max_decode_seqs:
                segments = line.decode  # all of them: the line starts a fresh deque
                line.decode = collections.deque()
                line.decode_count = 0
            else:
                segments = line.take_decode(node.max_decode_seqs)
            if len(segments) == 1:
                _, decode, context = segments[0]
            else:
                decode = list(_chain(*[reqs for _, reqs, _ in segments]))
                context = sum([c for _, _, c in segments])
        prefill: list[SimRequest] = []
        prompt_tokens = 0
        waiting_prefill = line.prefill
        if resume is not None or waiting_prefill:
            budget = node.max_prompt_tokens
            req = resume if resume is not None else waiting_prefill.popleft()
            left = req.prompt_tokens - req.prefilled
            req.chunk = prompt_tokens = budget if left >= budget else left
            prefill.append(req)
            while prompt_tokens < budget and waiting_prefill:
                req = waiting_prefill.popleft()
                req.chunk = min(req.prompt_tokens - req.prefilled, budget - prompt_tokens)
                prefill.append(req)
                prompt_tokens += req.chunk
        entry = node._single_entry
        if entry is None:
            entry = segments[0][0] if segments else prefill[0].entry_layer
            for e, _, _ in segments:
                if e != entry:
                    entry = None
                    break
            else:
                for req in prefill:
                    if req.entry_layer != entry:
                        entry = None
                        break
        if entry is None:
            seconds = node._segmented_seconds(prefill, segments)
        else:  # `uniform_step_seconds`
            seconds = (node.end_layer - entry) * node._layer_step_seconds(prompt_tokens, len(decode), context)
        node.batch_prefill, node.batch_decode, node._batch_segments = prefill, decode, segments
        node._batch_prompt_tokens, node._batch_entry, node.batch_context_tokens = prompt_tokens, entry, context
        node.busy = True
        node.steps += 1
        node.busy_s += seconds
        node.decode_seqs_total += len(decode)
        node.prompt_tokens_total += prompt_tokens
        _heappush(self._heap, (now + seconds, next(self._seq), STEP_DONE, node, None))


def _by_destination(
    prefill: list[SimRequest], next_hop: Callable, main: str, decode: list[SimRequest], dsts: list[str], context: int
) -> dict[str, list]:
    """`stepping._by_destination` by the routing table: the same groups in the same order. The
    largest decode group's context is `context` (the step's) less the others', so only the
    smaller groups' requests are read."""
    groups: dict[str, list] = {}
    for req in prefill:
        dst = next_hop(req, main)
        g = groups.get(dst)
        if g is None:
            groups[dst] = [[req], [], 0]
        else:
            g[0].append(req)
    largest, others = None, 0
    for dst in dict.fromkeys(dsts):
        reqs = list(itertools.compress(decode, map(dst.__eq__, dsts)))
        g = groups.get(dst)
        if g is None:
            g = groups[dst] = [[], reqs, 0]
        else:
            g[1] = reqs
        if largest is None or len(reqs) > len(largest[1]):
            largest, g = g, largest
        if g is not None:
            g[2] = sum(map(_context_tokens, g[1]))
            others += g[2]
    if largest is not None:
        largest[2] = context - others
    return groups


def _prompts_done(node: SimNode, prefill: list[SimRequest]) -> list[SimRequest]:
    """`SimNode.finish`'s prompts of a step of several: all but a part-prefilled last one."""
    for req in prefill:
        req.prefilled += req.chunk
        req.chunk = 0
    last = prefill[-1]
    if last.prefilled < last.prompt_tokens:
        prefill = prefill[:-1]
        node.waiting.prefill.appendleft(last)
    for req in prefill:
        req.prefilled = 0
    return prefill
