"""The paged cache in serving: one accounting (the scheduler's KV ledger and the engine's page
pool agree after any sequence of admit / step / finish / cancel: a hypothesis property test),
chunked prefill at run time through StageHost (chunks == one shot, partial entry layers), and
no stall (16 decoding requests step every batch while a long prompt prefills)."""

from __future__ import annotations

import functools
import types

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from helix_jax.model import SamplingParams, StageEngine, StepInput, random_stage_weights
from helix_jax.model.step_program import NARROW_CPU_OPTIONS
from helix_jax.modelconfig import PRESETS
from helix_jax.placement import FlowEdge, Placement
from helix_jax.runtime import wire
from helix_jax.runtime.stage_host import StageHost
from helix_jax.runtime.worker import Worker
from helix_jax.scheduler import RequestSpec, Scheduler

CFG = PRESETS["tiny"]  # 4 layers
FAST_COMPILE = NARROW_CPU_OPTIONS  # XLA CPU's quickest compile (tiny models: a step stays milliseconds)
SAMPLING = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}


def paged_engine(start=0, end=4, **kw) -> StageEngine:
    kw.setdefault("max_slots", 32)
    kw.setdefault("max_seq_len", 128)
    kw.setdefault("prefill_buckets", (16,))
    kw.setdefault("decode_buckets", (4, 32))
    kw.setdefault("prefill_batch_buckets", (1,))
    kw.setdefault("page_size", 4)
    weights = random_stage_weights(CFG, start, end, seed=0)
    return StageEngine(CFG, start, end, weights, kv_layout="paged", compiler_options=FAST_COMPILE, **kw)


# ---------------------------------------------------------------- one accounting
ONE_NODE = Placement("one", 4, {"n": (0, 4)}, (FlowEdge("coordinator", "n", 1), FlowEdge("n", "coordinator", 1)))


@functools.cache
def accounting_engine() -> StageEngine:
    """Built on first use, not at import: both xdist workers import every test file."""
    return paged_engine(max_slots=8, max_seq_len=32, num_pages=10, decode_buckets=(8,), prefill_buckets=(8,))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 12), st.integers(1, 10)),
        st.tuples(st.just("step"), st.just(0), st.just(0)),
        st.tuples(st.sampled_from(["finish", "cancel"]), st.integers(0, 7), st.just(0)),
    ),
    max_size=24,
)


@settings(max_examples=30, deadline=None)
@given(ops)
def test_ledger_and_page_pool_agree(sequence):
    engine = accounting_engine()
    for rid in [r for r in list(engine._requests)]:
        engine.release(rid)
    sched = Scheduler(ONE_NODE, {"n": engine.kv_capacity_token_layers}, kv_page_tokens={"n": engine.kv_page_tokens})
    ledger, pool = sched.ledger, engine.pool
    held: dict[str, list] = {}  # rid -> [next position, tokens to hold, prompt length]
    ids = iter(range(1000))

    def admit():
        for adm in sched.admit_ready():
            spec = adm.spec
            assert engine.can_add(spec.kv_tokens)  # admission never promises what the pool lacks
            engine.add_request(spec.request_id, SamplingParams(), reserve_tokens=spec.kv_tokens)
            held[spec.request_id] = [0, spec.kv_tokens - 1, spec.prompt_tokens]

    for op, a, b in sequence:
        if op == "submit":
            try:
                sched.submit(RequestSpec(f"r{next(ids)}", a, b))
            except Exception:
                pass  # too big for the node: refused, nothing reserved
        elif op == "step":
            items = []
            for rid, (pos, limit, prompt) in held.items():
                n = min(8, prompt - pos) if pos < prompt else 1
                if pos + n <= limit:
                    assert engine.can_run(StepInput(rid, 0, pos, token_ids=np.zeros(n, np.int32)))
                    items.append(StepInput(rid, 0, pos, token_ids=np.full(n, 7, np.int32)))
                    held[rid][0] += n
            if items:
                engine.step(items)
        else:  # an early stop (eos / stop string) or a cancel: everything comes back
            queued = [s.request_id for s in sched._queue]
            live = sorted(held)
            pick = (live + queued)[a % len(live + queued)] if live + queued else None
            if pick is not None:
                sched.finish(pick)
                if pick in held:
                    engine.release(pick)
                    del held[pick]
        admit()
        ledger.check()
        pool.check()
        assert ledger.used("n") == engine.kv_committed_token_layers
        assert ledger.free("n") == pool.pages_available * pool.page_size
        assert pool.pages_in_use <= pool.total_pages


# ---------------------------------------------------------------- chunked prefill
def step_msg(rid, data, position, route, hop=0, kv_tokens=None, index=0):
    extra = {} if kv_tokens is None else {"kv_tokens": kv_tokens}
    if position == 0:  # sampling travels with a request's first step only
        extra["sampling"] = SAMPLING
    return wire.make("step", [data], request_id=rid, route=route, hop=hop, position=position, index=index, **extra)


def forward(node, msg, result):
    return Worker._forward(types.SimpleNamespace(options=types.SimpleNamespace(node=node)), msg, result)


def test_chunked_prefill_through_two_hosts_equals_one_shot():
    """[0, 3) then [2, 4) entered at 3: a 40-token prompt runs in chunks of the hosts' budgets
    (16 and 8 tokens); the last stage samples once, the token a one-shot prefill samples."""
    hosts = {"a": StageHost(paged_engine(0, 3), "a", 0, 32, 16), "b": StageHost(paged_engine(2, 4, prefill_buckets=(8,)), "b", 0, 32, 8)}
    route = [["a", 0, 3], ["b", 3, 4]]
    prompt = np.random.default_rng(3).integers(0, 256, 40).astype(np.int32)
    hosts["a"].enqueue(step_msg("r", prompt, 0, route, kv_tokens=44))
    sampled, batches = [], {"a": 0, "b": 0}
    while any(host.waiting for host in hosts.values()):
        for node, host in hosts.items():
            batch = host.pick_batch()
            if not batch:
                continue
            batches[node] += 1
            for pending, result in host.run(batch):
                out = forward(node, pending.msg, result)
                if out is None:
                    continue
                dst, msg, _ = out
                if dst == "coordinator":
                    sampled.append(msg["token_id"])
                else:
                    hosts[dst].enqueue(msg)
    assert batches == {"a": 3, "b": 5} and len(sampled) == 1
    whole = paged_engine(0, 4, prefill_buckets=(64,), max_seq_len=64)
    whole.add_request("r")
    (ref,) = whole.step([StepInput("r", 0, 0, token_ids=prompt)])
    assert sampled == [ref.next_token]
    assert hosts["b"].engine.tokens_cached("r") == 40 and hosts["b"].engine.pool.table("r").pages[0] == []


def test_no_stall_sixteen_decodes_step_while_a_long_prompt_prefills():
    host = StageHost(paged_engine(), "n", 0, 32, 16)
    route = [["n", 0, 4]]
    rng = np.random.default_rng(0)
    position = {}
    for i in range(16):
        host.enqueue(step_msg(f"d{i}", rng.integers(0, 256, 5).astype(np.int32), 0, route, kv_tokens=60))
        position[f"d{i}"] = 5
    while host.waiting:  # 80 prompt tokens at 16 per batch
        host.run(host.pick_batch())
    assert all(host.engine.tokens_cached(rid) == 5 for rid in position)
    tokens = {f"d{i}": 0 for i in range(16)}
    host.enqueue(step_msg("long", rng.integers(0, 256, 100).astype(np.int32), 0, route, kv_tokens=104))
    steps = 0
    long_sampled = None
    while long_sampled is None:
        for rid in tokens:  # every decoding request has its next token waiting
            host.enqueue(step_msg(rid, np.asarray([1], np.int32), position[rid], route))
        batch = host.pick_batch()
        steps += 1
        decode = [p for p in batch if p.item[0].num_tokens == 1]
        prompt = [p for p in batch if p.item[0].request_id == "long"]
        assert len(decode) == 16 and len(prompt) == 1 and prompt[0].num_tokens <= 16
        for pending, result in host.run(batch):
            rid = pending.item[0].request_id
            if rid == "long":
                long_sampled = result.next_token
            else:
                tokens[rid] += 1
                position[rid] += 1
    assert steps == 7  # ceil(100 / 16) batches, each also carrying all 16 decode rows
    assert all(count == 7 for count in tokens.values())
