"""The two-subsequence waiting line forms the same batches as one line scanned in arrival order."""

from __future__ import annotations

import collections
import random

import pytest

from helix_jax.placement import Hop
from helix_jax.sim.cluster import SimNode, SimRequest
from helix_jax.sim.request import WaitingLine


class ScannedLine:
    """The plain reading of a step (the simulator before issue 21): scan the whole line in
    arrival order, take decode requests up to the cap and prompt chunks up to the budget."""

    def __init__(self, end_layer: int, max_prompt_tokens: int, max_decode_seqs: int, layer_step_seconds):
        self.end_layer, self.max_prompt, self.max_decode = end_layer, max_prompt_tokens, max_decode_seqs
        self.step = layer_step_seconds
        self.waiting: collections.deque[SimRequest] = collections.deque()
        self.batch: list[SimRequest] = []
        self.kv_entries = 0

    def form_batch(self) -> float:
        decode, prefill, kept, prompt = [], [], collections.deque(), 0
        for req in self.waiting:
            if req.generated:
                if len(decode) < self.max_decode:
                    decode.append(req)
                    continue
            elif prompt < self.max_prompt:
                req.chunk = min(req.prompt_tokens - req.prefilled, self.max_prompt - prompt)
                prefill.append(req)
                prompt += req.chunk
                continue
            kept.append(req)
        self.waiting, self.batch = kept, prefill + decode
        groups: dict[int, list[int]] = {}
        for req in self.batch:
            g = groups.setdefault(req.route[req.hop_index].start_layer, [0, 0, 0])
            if req.generated:
                g[1] += 1
                g[2] += req.prompt_tokens + req.generated
            else:
                g[0] += req.chunk
        entries, total, sums = sorted(groups), 0.0, [0, 0, 0]
        for i, entry in enumerate(entries):
            sums = [a + b for a, b in zip(sums, groups[entry])]
            upto = entries[i + 1] if i + 1 < len(entries) else self.end_layer
            total += (upto - entry) * self.step(*sums)
        return total

    def finish_batch(self) -> list[SimRequest]:
        done, unfinished = [], []
        for req in self.batch:
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
                req.prefilled = 0
                done.append(req)
        self.waiting.extendleft(reversed(unfinished))
        self.batch = []
        return done


def twin_requests(rng: random.Random, count: int, serial: list[int]) -> tuple[list[SimRequest], list[SimRequest]]:
    """`count` random requests at node n [1, 5), entering at layer 1-4, prompt or decoding; twice."""
    ours, theirs = [], []
    for _ in range(count):
        entry = rng.randint(1, 4)
        route = (Hop("x", 0, entry), Hop("n", entry, 5))
        prompt, generated = rng.randint(1, 300), rng.choice([0, 0, 1, 7, 40])
        for side in (ours, theirs):
            req = SimRequest(f"r{serial[0]}", prompt, 50, route, 0.0)
            req.hop_index, req.generated = 1, generated
            side.append(req)
        serial[0] += 1
    return ours, theirs


@pytest.mark.parametrize("seed", range(6))
def test_batches_equal_a_single_scanned_line(seed: int) -> None:
    rng = random.Random(seed)
    calls: list[list] = [[], []]

    def recorder(side: int):
        def step(prompt: int, decode: int, context: int) -> float:
            calls[side].append((prompt, decode, context))
            return 1e-3 * prompt + 0.01 * decode + 1e-6 * context

        return step

    max_prompt, max_decode = rng.choice([64, 256]), rng.randint(1, 6)
    node = SimNode("n", 5, max_prompt, max_decode, recorder(0), start_layer=1)
    line = ScannedLine(5, max_prompt, max_decode, recorder(1))
    serial = [0]
    for _ in range(60):
        ours, theirs = twin_requests(rng, rng.choice([0, 1, 3, 8]), serial)
        node.waiting.extend(ours)
        line.waiting.extend(theirs)
        if not line.waiting:
            continue
        assert node.form_batch() == line.form_batch()
        assert [(r.rid, r.chunk) for r in node.batch] == [(r.rid, r.chunk) for r in line.batch]
        assert [r.rid for r in node.finish_batch()] == [r.rid for r in line.finish_batch()]
        assert node.kv_entries == line.kv_entries and len(node.waiting) == len(line.waiting)
    assert calls[0] == calls[1] and len(calls[0]) > 30


def test_a_split_message_keeps_order_and_context_sums() -> None:
    line = WaitingLine()
    route = (Hop("n", 0, 2),)
    reqs = [SimRequest(f"d{i}", 10 * (i + 1), 5, route, 0.0) for i in range(5)]
    for req in reqs:
        req.generated = 2
    line.add(0, [], reqs[:3])  # context 12 + 22 + 32
    line.add(1, [], reqs[3:])  # context 42 + 52
    assert [(e, [r.rid for r in rs], c) for e, rs, c in line.take_decode(2)] == [(0, ["d0", "d1"], 34)]
    assert [(e, [r.rid for r in rs], c) for e, rs, c in line.take_decode(2)] == [(0, ["d2"], 32), (1, ["d3"], 42)]
    assert len(line) == 1 and line.decode[0][2] == 52
