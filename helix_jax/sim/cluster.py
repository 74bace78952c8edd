"""Simulated nodes and links: continuous-batching steps and FIFO link transfers.

Owns the execution model of HELIX.md section 6 for one node and one link (the engine in
engine.py moves requests between them):

* `SimNode`: requests wait in arrival order; when idle the node forms one batch mixing
  prefill and decode work, bounded by `max_prompt_tokens` prompt tokens (longer prompts are
  prefilled in chunks over several steps, as the runtime does, and move on to the next hop
  once whole), `max_decode_seqs` decode sequences, and the KV room
  the scheduler reserved at admission. The step runs the node's layers in order; a request
  that entered at layer x (partial inference) joins at layer x, so the step costs
  `sum over layer segments of layers x layer_step_seconds(active prompt tokens, active decode
  seqs, their context)`. Actual KV entries are tracked and checked against the reservation.
* `SimLink`: one transfer at a time in FIFO order; the link is busy for bytes / bandwidth and
  the message lands `latency` later (propagation overlaps the next transfer).
"""

from __future__ import annotations

import collections
from typing import Callable


class SimRequest:
    """A request in flight: where it is on its route and what it has produced."""

    __slots__ = ("rid", "prompt_tokens", "output_tokens", "generated", "route", "hop_index",
                 "arrival_s", "first_token_s", "node_enter_s", "prefilled", "chunk")

    def __init__(self, rid: str, prompt_tokens: int, output_tokens: int, route, arrival_s: float):
        self.rid = rid
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.generated = 0
        self.route = route  # tuple[Hop, ...]
        self.hop_index = 0
        self.arrival_s = arrival_s
        self.first_token_s = 0.0
        self.node_enter_s = 0.0
        self.prefilled = 0  # prompt tokens already run at the current hop (chunked prefill)
        self.chunk = 0  # prompt tokens this request runs in the step in progress

    @property
    def context_tokens(self) -> int:
        """Tokens whose KV a decode step reads: the prompt and every fed-back output token."""
        return self.prompt_tokens + self.generated


class SimNode:
    """One compute node: a waiting line, a batch in progress, KV use and running totals."""

    def __init__(self, name: str, end_layer: int, max_prompt_tokens: int, max_decode_seqs: int,
                 layer_step_seconds: Callable[[int, int, int], float]):
        self.name = name
        self.end_layer = end_layer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_decode_seqs = max_decode_seqs
        self._layer_step_seconds = layer_step_seconds
        self.waiting: collections.deque[SimRequest] = collections.deque()
        self.batch: list[SimRequest] = []
        self.busy = False
        self.kv_entries = 0  # token-layers actually written
        # running totals for reports
        self.steps = 0
        self.busy_s = 0.0
        self.decode_seqs_total = 0
        self.prompt_tokens_total = 0

    def form_batch(self) -> float:
        """Take a batch from the waiting line; returns the step's duration in seconds.

        Prompts are prefilled in chunks: a step runs at most `max_prompt_tokens` prompt tokens,
        so decode tokens never wait behind a whole long prompt (chunked prefill, as the runtime
        does); a prompt whose chunks are not all done stays at the head of the line."""
        decode: list[SimRequest] = []
        prefill: list[SimRequest] = []
        prompt_tokens = 0
        kept: collections.deque[SimRequest] = collections.deque()
        for req in self.waiting:
            if req.generated:
                if len(decode) < self.max_decode_seqs:
                    decode.append(req)
                    continue
            elif prompt_tokens < self.max_prompt_tokens:
                req.chunk = min(req.prompt_tokens - req.prefilled, self.max_prompt_tokens - prompt_tokens)
                prefill.append(req)
                prompt_tokens += req.chunk
                continue
            kept.append(req)
        self.waiting = kept
        self.batch = prefill + decode
        self.busy = True
        seconds = self._step_seconds(self.batch)
        self.steps += 1
        self.busy_s += seconds
        self.decode_seqs_total += len(decode)
        self.prompt_tokens_total += prompt_tokens
        return seconds

    def _step_seconds(self, batch: list[SimRequest]) -> float:
        # entry layer -> [prompt tokens, decode seqs, decode context tokens]
        groups: dict[int, list[int]] = {}
        for req in batch:
            entry = req.route[req.hop_index].start_layer
            g = groups.get(entry)
            if g is None:
                g = groups[entry] = [0, 0, 0]
            if req.generated:
                g[1] += 1
                g[2] += req.prompt_tokens + req.generated
            else:
                g[0] += req.chunk
        entries = sorted(groups)
        total = 0.0
        prompt = decode = context = 0
        for i, entry in enumerate(entries):
            g = groups[entry]
            prompt += g[0]
            decode += g[1]
            context += g[2]
            upto = entries[i + 1] if i + 1 < len(entries) else self.end_layer
            total += (upto - entry) * self._layer_step_seconds(prompt, decode, context)
        return total

    def finish_batch(self) -> list[SimRequest]:
        """End the step: write the batch's KV; returns the requests that move on (in batch
        order). A prompt with chunks left goes back to the head of the waiting line."""
        batch, self.batch, self.busy = self.batch, [], False
        done, unfinished = [], []
        for req in batch:
            layers = req.route[req.hop_index].num_layers
            if req.generated:
                self.kv_entries += layers
                done.append(req)
                continue
            self.kv_entries += layers * req.chunk
            req.prefilled += req.chunk
            req.chunk = 0
            if req.prefilled < req.prompt_tokens:
                unfinished.append(req)
            else:
                req.prefilled = 0  # the next hop starts its own prefill
                done.append(req)
        self.waiting.extendleft(reversed(unfinished))
        return done


class SimLink:
    """A directed link with one FIFO transfer at a time."""

    __slots__ = ("latency_s", "bytes_per_s", "bytes_per_token", "free_at_s", "busy_s", "transfers")

    def __init__(self, latency_s: float, bytes_per_s: float, bytes_per_token: float):
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.bytes_per_token = bytes_per_token
        self.free_at_s = 0.0
        self.busy_s = 0.0
        self.transfers = 0

    def send(self, now_s: float, num_tokens: int) -> float:
        """Queue a message of `num_tokens` tokens at `now_s`; returns its arrival time."""
        start = now_s if now_s > self.free_at_s else self.free_at_s
        wire_s = num_tokens * self.bytes_per_token / self.bytes_per_s
        self.free_at_s = start + wire_s
        self.busy_s += wire_s
        self.transfers += 1
        return self.free_at_s + self.latency_s
