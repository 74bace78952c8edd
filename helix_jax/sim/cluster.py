"""Simulated nodes: continuous-batching steps.

Owns the execution model of HELIX.md section 6 for one node (the engine in engine.py moves
requests between nodes over the cost model's FIFO links, `costmodel.links.FifoLink`; their
waiting lines are in request.py):

* `SimNode`: requests wait in arrival order; when idle the node forms one batch mixing
  prefill and decode work, bounded by `max_prompt_tokens` prompt tokens (the cost model's
  `max_prompt_tokens_per_step`; longer prompts are prefilled in chunks over several steps,
  as the runtime does, and move on to the next hop once whole), `max_decode_seqs` decode
  sequences, and the KV room the scheduler reserved at admission. The step runs the node's
  layers in order; a request that entered at layer x (partial inference) joins at layer x,
  so the step costs `sum over layer segments of layers x layer_step_seconds(active prompt
  tokens, active decode seqs, their context)`, as the cost model's
  `step_seconds_by_entry_layer` computes it. Actual KV entries are tracked and checked
  against the reservation. A step's bookkeeping is per message taken and per entry layer, plus C-level sums over its
  requests: its cost grows with steps, not with the tokens in them.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

from helix_jax.costmodel.steps import step_seconds_by_entry_layer, uniform_step_seconds
from helix_jax.sim.request import SimRequest, WaitingLine

__all__ = ["SimNode", "SimRequest", "WaitingLine"]


class SimNode:
    """One compute node: a waiting line, a batch in progress, KV use and running totals.

    `start_layer`, where known, lets a node holding one layer skip comparing entry layers
    (every request runs exactly that layer there)."""

    __slots__ = (
        "name",
        "end_layer",
        "max_prompt_tokens",
        "max_decode_seqs",
        "_layer_step_seconds",
        "_single_entry",
        "waiting",
        "batch_prefill",
        "batch_decode",
        "_batch_segments",
        "batch_context_tokens",
        "_batch_entry",
        "_batch_prompt_tokens",
        "busy",
        "kv_entries",
        "pending",
        "wake_key",
        "out_links",
        "next_hop",
        "main_next",
        "next_counts",
        "steps",
        "busy_s",
        "decode_seqs_total",
        "prompt_tokens_total",
    )

    def __init__(
        self,
        name: str,
        end_layer: int,
        max_prompt_tokens: int,
        max_decode_seqs: int,
        layer_step_seconds: Callable[[int, int, int], float],
        start_layer: int | None = None,
    ):
        self.name = name
        self.end_layer = end_layer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_decode_seqs = max_decode_seqs
        self._layer_step_seconds = layer_step_seconds
        self._single_entry = start_layer if start_layer is not None and end_layer - start_layer == 1 else None
        self.waiting = WaitingLine()
        self.batch_prefill: list[SimRequest] = []
        self.batch_decode: list[SimRequest] = []
        self._batch_segments: Sequence[tuple[int, list[SimRequest], int]] = []  # decode part by message
        self.batch_context_tokens = 0  # of the decode requests in the step
        self._batch_entry: int | None = None  # the step's one entry layer (None: several)
        self._batch_prompt_tokens = 0
        self.busy = False
        self.kv_entries = 0  # token-layers actually written
        # engine bookkeeping: messages on their way here, and the wake-up scheduled while idle
        self.pending: list[tuple] = []  # heap of (arrival_s, seq, entry layer, prompt rows, decode rows)
        self.wake_key: tuple[float, int] | None = None
        self.out_links: dict = {}  # destination -> (FifoLink, its SimNode or None for the coordinator)
        # request -> where it goes after this node, for the requests in flight routed through it
        # that do not go to `main_next` (the first one's next node: a smaller table); kept by
        # the engine from admission to completion, the hot path routes by it
        self.next_hop: dict[SimRequest, str] = {}
        self.main_next = ""  # none yet
        self.next_counts: dict[str, int] = {}  # next node -> how many of those requests go there
        # running totals for reports
        self.steps = 0
        self.busy_s = 0.0
        self.decode_seqs_total = 0
        self.prompt_tokens_total = 0

    @property
    def batch(self) -> list[SimRequest]:
        """The step in progress, prompt chunks first (the order requests move on in)."""
        return self.batch_prefill + self.batch_decode

    def form_batch(self) -> float:
        """Take a batch from the waiting line; returns the step's duration in seconds.

        Prompts are prefilled in chunks: a step runs at most `max_prompt_tokens` prompt tokens,
        so decode tokens never wait behind a whole long prompt (chunked prefill, as the runtime
        does); a prompt whose chunks are not all done stays at the head of the line."""
        line = self.waiting
        count = line.decode_count
        if not count:  # prompt chunks only (most steps while long prompts move through)
            segments: list[tuple[int, list[SimRequest], int]] = []
            decode: list[SimRequest] = []
            context = 0
        else:
            if count <= self.max_decode_seqs:  # all of them (`take_decode`'s first case, inlined)
                segments = list(line.decode)
                line.decode.clear()
                line.decode_count = 0
            else:
                segments = line.take_decode(self.max_decode_seqs)
            if len(segments) == 1:
                _, decode, context = segments[0]
            else:
                decode = list(itertools.chain.from_iterable(reqs for _, reqs, _ in segments))
                context = sum(c for _, _, c in segments)
        prefill: list[SimRequest] = []
        prompt_tokens = 0
        waiting_prefill = line.prefill
        if waiting_prefill:
            budget = self.max_prompt_tokens
            req = waiting_prefill.popleft()
            left = req.prompt_tokens - req.prefilled
            if left >= budget:  # the head prompt alone fills the step (the loop below, first pass)
                req.chunk = prompt_tokens = budget
                prefill.append(req)
            else:
                req.chunk = prompt_tokens = left
                prefill.append(req)
                while waiting_prefill and prompt_tokens < budget:
                    req = waiting_prefill.popleft()
                    req.chunk = min(req.prompt_tokens - req.prefilled, budget - prompt_tokens)
                    prefill.append(req)
                    prompt_tokens += req.chunk
        self.batch_prefill, self.batch_decode, self._batch_segments = prefill, decode, segments
        self._batch_prompt_tokens = prompt_tokens
        self.busy = True
        entry = self._single_entry
        if entry is None:
            if not segments and len(prefill) == 1:
                entry = prefill[0].entry_layer
            elif not prefill and len(segments) == 1:
                entry = segments[0][0]
            else:
                entries = {e for e, _, _ in segments}
                entries.update([req.entry_layer for req in prefill])
                entry = entries.pop() if len(entries) == 1 else None
        self._batch_entry = entry
        self.batch_context_tokens = context
        if entry is None:
            seconds = self._segmented_seconds(prefill, segments)
        else:
            seconds = uniform_step_seconds(self._layer_step_seconds, self.end_layer - entry, prompt_tokens, len(decode), context)
        self.steps += 1
        self.busy_s += seconds
        self.decode_seqs_total += len(decode)
        self.prompt_tokens_total += prompt_tokens
        return seconds

    def _segmented_seconds(self, prefill: list[SimRequest], segments: Sequence[tuple[int, list[SimRequest], int]]) -> float:
        """Requests entering at different layers: each layer segment runs those already in."""
        groups: dict[int, list[int]] = {}  # entry layer -> [prompt tokens, decode seqs, context]
        for req in prefill:
            groups.setdefault(req.entry_layer, [0, 0, 0])[0] += req.chunk
        for entry, reqs, context_tokens in segments:
            g = groups.setdefault(entry, [0, 0, 0])
            g[1] += len(reqs)
            g[2] += context_tokens
        return step_seconds_by_entry_layer(self._layer_step_seconds, self.end_layer, groups)

    def finish(self) -> tuple[list[SimRequest], list[SimRequest]]:
        """End the step: write the batch's KV; returns the prompts and the decode requests that
        move on (each in batch order). A prompt with chunks left goes back to the head of the
        waiting line (only the last chunk of a step can be partial)."""
        prefill, decode, end = self.batch_prefill, self.batch_decode, self.end_layer
        self.batch_prefill, self.batch_decode, self.busy = [], [], False
        entry = self._batch_entry
        if entry is not None:  # every request ran the same layers
            self.kv_entries += (end - entry) * (len(decode) + self._batch_prompt_tokens)
        else:
            kv = sum((end - e) * len(reqs) for e, reqs, _ in self._batch_segments)
            self.kv_entries += kv + sum((end - req.entry_layer) * req.chunk for req in prefill)
        self._batch_segments = []
        if not prefill:
            return prefill, decode
        if len(prefill) == 1:  # the usual case: one prompt chunk (the loop below, unrolled)
            req = prefill[0]
            req.prefilled += req.chunk
            req.chunk = 0
            if req.prefilled < req.prompt_tokens:
                self.waiting.prefill.appendleft(req)
                return [], decode
            req.prefilled = 0
            return prefill, decode
        for req in prefill:
            req.prefilled += req.chunk
            req.chunk = 0
        done = prefill
        last = prefill[-1]
        if last.prefilled < last.prompt_tokens:
            done = prefill[:-1]
            self.waiting.prefill.appendleft(last)
        for req in done:
            req.prefilled = 0  # the next hop starts its own prefill
        return done, decode

    def finish_batch(self) -> list[SimRequest]:
        """`finish`, as one list in batch order."""
        prefill, decode = self.finish()
        return prefill + decode
