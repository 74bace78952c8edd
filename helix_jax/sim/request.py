"""Simulated requests and a node's waiting line (the rows that node steps batch).

Sits under the simulated cluster: scheduler admission -> **SimRequest** -> waiting line ->
`SimNode` step (cluster.py) -> next hop or coordinator (engine.py).

* `SimRequest`: one admitted request on its fixed route. Where it goes next is an iterator over
  its route's next nodes (`path`), so the engine moves a whole batch on with C-level `map`
  calls instead of a Python loop per request; `hop_index` is read off that iterator.
* `WaitingLine`: a batch takes the first `max_decode_seqs` decode requests of the line and
  prompt chunks from the first prefill requests; neither choice looks at the other kind, so
  the line is kept as its two subsequences. Decode requests wait in segments, one per message
  (every request of a message enters this node at the same layer, the sender's end layer), so
  forming a batch costs the messages it takes, not its requests or the line's length.
"""

from __future__ import annotations

import collections
import operator
from typing import Iterable

from helix_jax.topology import COORDINATOR

_context_tokens = operator.attrgetter("context_tokens")


class SimRequest:
    """A request in flight: where it is on its route and what it has produced."""

    __slots__ = (
        "rid",
        "prompt_tokens",
        "output_tokens",
        "_generated",
        "context_tokens",
        "route",
        "next_nodes",
        "path",
        "entry_layer",
        "arrival_s",
        "first_token_s",
        "node_enter_s",
        "prefilled",
        "chunk",
    )

    def __init__(self, rid: str, prompt_tokens: int, output_tokens: int, route, arrival_s: float):
        self.rid = rid
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.generated = 0
        self.route = route  # tuple[Hop, ...]
        # where a request at hop i goes next: hop i + 1's node, the coordinator after the last
        self.next_nodes = (*(hop.node for hop in route[1:]), COORDINATOR)
        self.path = iter(self.next_nodes)  # next(path): the next destination; hop 0 now
        self.entry_layer = 0  # the layer it entered its current node at (set by the waiting line)
        self.arrival_s = arrival_s
        self.first_token_s = 0.0
        self.node_enter_s = 0.0
        self.prefilled = 0  # prompt tokens already run at the current hop (chunked prefill)
        self.chunk = 0  # prompt tokens this request runs in the step in progress

    @property
    def generated(self) -> int:
        """Output tokens sampled so far."""
        return self._generated

    @generated.setter
    def generated(self, tokens: int) -> None:
        self._generated = tokens
        # what a decode step reads: the prompt's KV and every fed-back output token's
        self.context_tokens = self.prompt_tokens + tokens

    @property
    def hop_index(self) -> int:
        """The route hop it is at (len(route) once past the last hop, on its way back)."""
        return len(self.next_nodes) - operator.length_hint(self.path)

    @hop_index.setter
    def hop_index(self, index: int) -> None:
        self.path = iter(self.next_nodes[index:])


class WaitingLine:
    """A node's waiting line: decode segments `(entry layer, requests, their context tokens)`
    and prompt requests, each in arrival order (see the module docstring). A segment's context
    sum travels with its message, so a step need not visit its requests to price itself."""

    __slots__ = ("decode", "decode_count", "prefill")

    def __init__(self) -> None:
        self.decode: collections.deque[tuple[int, list[SimRequest], int]] = collections.deque()
        self.decode_count = 0
        self.prefill: collections.deque[SimRequest] = collections.deque()

    def add(self, entry_layer: int, prefill: list[SimRequest], decode: list[SimRequest], context_tokens: int | None = None) -> None:
        """A message's requests, all entering at `entry_layer`: prompts, then decode requests
        (`context_tokens`: theirs summed, if the sender knows it)."""
        for req in prefill:
            req.entry_layer = entry_layer
        self.prefill.extend(prefill)
        if decode:
            if context_tokens is None:
                context_tokens = sum(map(_context_tokens, decode))
            self.decode.append((entry_layer, decode, context_tokens))
            self.decode_count += len(decode)

    def append(self, req: SimRequest) -> None:
        """One request, entering at its current hop's start layer."""
        entry = req.route[req.hop_index].start_layer
        if req.generated:
            self.add(entry, [], [req])
        else:
            self.add(entry, [req], [])

    def extend(self, reqs: Iterable[SimRequest]) -> None:
        for req in reqs:
            self.append(req)

    def take_decode(self, cap: int) -> list[tuple[int, list[SimRequest], int]]:
        """The first `cap` decode requests (all if fewer), as segments in arrival order."""
        segments = self.decode
        if self.decode_count <= cap:
            taken = list(segments)
            segments.clear()
            self.decode_count = 0
            return taken
        taken, need = [], cap
        while need:
            entry, reqs, context = segments[0]
            if len(reqs) <= need:
                segments.popleft()
                taken.append((entry, reqs, context))
                need -= len(reqs)
            else:
                head = reqs[:need]
                head_context = sum(map(_context_tokens, head))
                taken.append((entry, head, head_context))
                segments[0] = (entry, reqs[need:], context - head_context)
                need = 0
        self.decode_count -= cap
        return taken

    def __len__(self) -> int:
        return self.decode_count + len(self.prefill)

    def __bool__(self) -> bool:
        return bool(self.decode_count) or bool(self.prefill)
