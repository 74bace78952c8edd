"""Step 3 of a simulated run: messages to nodes, node steps, and where their requests go next.

Sits between admission (admission.py) and the coordinator (engine.py): a message ->
**the receiving node's pending heap -> its waiting line -> a step (cluster.py) -> the next
hop's message**. A mixin of `Simulator`; `ReferenceSimulator` overrides `_deliver`.

Why per step: a message to a node goes into that node's own heap of pending arrivals under the
key (arrival time, sequence number) an event would have had. A busy node takes in every pending
message ordered before its step's end when that end is processed (`_take_arrived`); only an idle
node needs an event, a wake-up at its earliest pending arrival (`WAKE`; superseded wake-ups are
skipped). So the global heap holds about one event per step, however many messages the steps
exchange, and every key, hence the order of everything, is the reference engine's.
"""

from __future__ import annotations

import heapq
import itertools
import operator

from helix_jax.costmodel.links import FifoLink
from helix_jax.sim.cluster import SimNode, SimRequest
from helix_jax.sim.state import RunState
from helix_jax.topology import COORDINATOR

STEP_DONE, WAKE, AT_COORDINATOR, ARRIVAL, AT_NODE = range(5)  # AT_NODE: reference.py only
EVENT_KINDS = ("step_done", "wake", "at_coordinator", "arrival", "at_node")

_path = operator.attrgetter("path")
_prompt_tokens = operator.attrgetter("prompt_tokens")
_context_tokens = operator.attrgetter("context_tokens")
_FEW_DESTINATIONS = 3  # up to this many, grouping a batch by destination is one C-level pass each


class NodeStepper(RunState):
    """Messages, steps and next hops for `Simulator` (see the module docstring)."""

    def _link(self, src: str, dst: str) -> FifoLink:
        link = self._links.get((src, dst))
        if link is None:
            link = self._links[(src, dst)] = self.cost.fifo_link(src, dst)
        return link

    def _out_link(self, out: dict, src: str, dst: str) -> tuple[FifoLink, SimNode | None]:
        """(link src -> dst, the destination node or None for the coordinator), kept in `out`."""
        hop = out[dst] = (self._link(src, dst), None if dst == COORDINATOR else self.nodes[dst])
        return hop

    def _send(self, now: float, src: str, out: dict, entry_layer: int, groups: dict[str, list]) -> None:
        """groups: destination -> [prompt requests, decode requests, their context tokens or
        None]; one message each, over the links in `out` (src's, by destination)."""
        for dst, (prefill, decode, context) in groups.items():
            self._send_one(now, src, out, entry_layer, dst, prefill, decode, context)

    def _send_one(
        self, now: float, src: str, out: dict, entry_layer: int, dst: str, prefill: list, decode: list, context: int | None
    ) -> None:
        """One message: prompts carry their prompt's activations to a node, one token id to the
        coordinator; decode requests one vector each. Every request in it enters its next node
        at `entry_layer` (the sender's end layer)."""
        hop = out.get(dst)
        link, dst_node = hop if hop is not None else self._out_link(out, src, dst)
        if dst_node is None:
            arrive = link.send(now, len(prefill) + len(decode))
            heapq.heappush(self._heap, (arrive, next(self._seq), AT_COORDINATOR, prefill + decode if prefill else decode, None))
        else:
            tokens = len(decode) + sum(map(_prompt_tokens, prefill)) if prefill else len(decode)
            self._deliver(dst_node, link.send(now, tokens), next(self._seq), entry_layer, prefill, decode, context)

    def _deliver(self, node: SimNode, arrive: float, seq: int, entry_layer: int, prefill: list, decode: list, context: int | None) -> None:
        """A message on its way to `node`: pending there; an idle node wakes at its earliest."""
        heapq.heappush(node.pending, (arrive, seq, entry_layer, prefill, decode, context))
        if not node.busy:
            key = (arrive, seq)
            if node.wake_key is None or key < node.wake_key:
                node.wake_key = key
                heapq.heappush(self._heap, (arrive, seq, WAKE, next(self._wakes), node))

    def _take_arrived(self, node: SimNode, now: float, seq: int) -> None:
        """Move the messages ordered before the event (now, seq) into the waiting line."""
        pending, line = node.pending, node.waiting
        while pending and (pending[0][0] < now or (pending[0][0] == now and pending[0][1] <= seq)):
            arrive, _, entry_layer, prefill, decode, context = heapq.heappop(pending)
            if self._observe_latency:
                for req in itertools.chain(prefill, decode):
                    req.node_enter_s = arrive
            line.add(entry_layer, prefill, decode, context)

    def _start_step(self, node: SimNode, now: float) -> None:
        if self._observe_queue:
            self.scheduler.on_node_queue(node.name, len(node.waiting))
        node.wake_key = None
        heapq.heappush(self._heap, (now + node.form_batch(), next(self._seq), STEP_DONE, node, None))

    def _step_done(self, node: SimNode, now: float, seq: int = -1) -> None:
        pending = node.pending
        if pending and (pending[0][0] < now or (pending[0][0] == now and pending[0][1] < seq)):
            self._take_arrived(node, now, seq)
        prefill, decode = node.finish()
        if node.kv_entries > self._kv_reserved[node.name]:  # checked after every step, prompt-chunk-only ones too
            raise RuntimeError(
                f"simulated KV on {node.name} ({node.kv_entries} token-layers) exceeds its reservation ({self._kv_reserved[node.name]})"
            )
        if self._observe_latency and (prefill or decode):
            waited = sum(now - r.node_enter_s for r in itertools.chain(prefill, decode))  # batch order
            self.scheduler.on_hop_latency(node.name, waited / (len(prefill) + len(decode)))
        if decode:  # each request's next hop, one C-level pass (past the last: the coordinator)
            dsts = list(map(next, map(_path, decode)))
            if len(dsts) != len(decode):  # map() stops quietly where a path ran out
                raise RuntimeError(f"a request on {node.name} has no hop left on its route")
            if dsts.count(dsts[0]) != len(dsts):
                self._send(now, node.name, node.out_links, node.end_layer, _by_destination(prefill, decode, dsts))
            elif not prefill:  # the usual case: all go one way
                self._send_one(now, node.name, node.out_links, node.end_layer, dsts[0], prefill, decode, node.batch_context_tokens)
            elif len(prefill) == 1:  # one prompt done and the decode rows one way: `_by_destination`'s groups
                prompt_dst = next(prefill[0].path)
                if prompt_dst == dsts[0]:
                    self._send_one(now, node.name, node.out_links, node.end_layer, prompt_dst, prefill, decode, node.batch_context_tokens)
                else:
                    self._send_one(now, node.name, node.out_links, node.end_layer, prompt_dst, prefill, [], 0)
                    self._send_one(now, node.name, node.out_links, node.end_layer, dsts[0], [], decode, node.batch_context_tokens)
            else:
                self._send(now, node.name, node.out_links, node.end_layer, _by_destination(prefill, decode, dsts))
        elif prefill:
            if len(prefill) == 1:  # one prompt done here (`_by_destination`'s one group, inlined)
                self._send_one(now, node.name, node.out_links, node.end_layer, next(prefill[0].path), prefill, [], 0)
            else:
                self._send(now, node.name, node.out_links, node.end_layer, _by_destination(prefill, [], []))
        line = node.waiting
        if line.decode_count or line.prefill:  # the next step at once (`_start_step`, inlined: the hot path)
            if self._observe_queue:
                self.scheduler.on_node_queue(node.name, len(line))
            node.wake_key = None
            heapq.heappush(self._heap, (now + node.form_batch(), next(self._seq), STEP_DONE, node, None))
        elif pending:
            arrive, seq = pending[0][:2]
            node.wake_key = (arrive, seq)
            heapq.heappush(self._heap, (arrive, seq, WAKE, next(self._wakes), node))

    def _wake(self, node: SimNode, now: float, seq: int) -> bool:
        """An idle node's earliest pending message has landed; False for a superseded wake-up."""
        if node.busy or node.wake_key != (now, seq):
            self.stale_wakes += 1
            return False
        self._take_arrived(node, now, seq)
        self._start_step(node, now)
        return True


def _by_destination(prefill: list[SimRequest], decode: list[SimRequest], dsts: list[str]) -> dict[str, list]:
    """Group a step's requests by their next destination, in order of first appearance (the
    order their messages are sent in): dst -> [prompts, decode requests, the decode requests'
    context tokens]; decode destinations `dsts` given, prompts' read. A few destinations take
    one C-level pass over the decode requests each; many, one Python pass."""
    groups: dict[str, list] = {}
    for req in prefill:
        dst = next(req.path)
        g = groups.get(dst)
        if g is None:
            groups[dst] = [[req], [], 0]
        else:
            g[0].append(req)
    order = dict.fromkeys(dsts)
    if len(order) <= _FEW_DESTINATIONS:
        for dst in order:
            reqs = list(itertools.compress(decode, map(dst.__eq__, dsts)))
            g = groups.get(dst)
            if g is None:
                groups[dst] = [[], reqs, sum(map(_context_tokens, reqs))]
            else:
                g[1], g[2] = reqs, sum(map(_context_tokens, reqs))
        return groups
    for req, dst in zip(decode, dsts):
        g = groups.get(dst)
        if g is None:
            groups[dst] = [[], [req], req.context_tokens]
        else:
            g[1].append(req)
            g[2] += req.context_tokens
    return groups
