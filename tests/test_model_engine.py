"""StageEngine equivalences: staged == single stage, cached decode == recompute, chunked ==
one-shot prefill, padded == unpadded, partial inference == the matching slice, and no
recompilation in steady state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helix_jax.errors import ConfigError, OverloadedError, RequestError
from helix_jax.model import (
    SamplingParams,
    StageEngine,
    StepInput,
    forward_full,
    random_stage_weights,
    slots_for_kv_budget,
)
from helix_jax.model.layers import chunk_attention, window_attention
from helix_jax.model.step_program import NARROW_CPU_OPTIONS
from helix_jax.modelconfig import PRESETS

CFG = PRESETS["tiny"]  # 4 layers, width 64, GQA 4/2, fp32
ATOL = 2e-4
FAST_COMPILE = NARROW_CPU_OPTIONS  # XLA CPU's quickest compile (tiny models: a step stays milliseconds)
PROMPT = np.array([256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114], np.int32)  # 11 tokens


@pytest.fixture(scope="module")
def reference():
    """jitted uncached whole-model logits [T, vocab] of a 1-D token sequence (T <= 32)."""
    weights = random_stage_weights(CFG, 0, CFG.num_layers, seed=0)
    fn = jax.jit(lambda state, ids: forward_full(nnx.merge(weights.graphdef, state), ids))

    def logits(ids):  # causal: trailing padding does not change the logits of real positions
        padded = np.zeros((1, 32), np.int32)
        padded[0, : len(ids)] = ids
        return np.asarray(fn(weights.state, jnp.asarray(padded)))[0, : len(ids)]

    return logits


def make_engine(start: int, end: int, layer_loop: str = "scan", config=CFG, **kw) -> StageEngine:
    kw.setdefault("max_slots", 4)
    kw.setdefault("max_seq_len", 32)
    kw.setdefault("prefill_buckets", (8,))
    kw.setdefault("decode_buckets", (1,))
    kw.setdefault("prefill_batch_buckets", (1,))
    kw.setdefault("compiler_options", FAST_COMPILE)
    weights = random_stage_weights(config, start, end, seed=0, layer_loop=layer_loop)
    return StageEngine(config, start, end, weights, return_logits=True, **kw)


def run_chain(engines, request_id, chunks, position):
    """Send token chunks through a pipeline of engines, each entered where the previous one ended
    (partial inference where ranges overlap); return the last stage's output."""
    out = None
    for chunk_index, chunk in enumerate(chunks):
        last_chunk = chunk_index == len(chunks) - 1
        payload, entry = {"token_ids": np.asarray(chunk, np.int32)}, 0
        for engine in engines:
            (out,) = engine.step([StepInput(request_id, entry, position, sample=last_chunk, **payload)])
            payload, entry = {"hidden": out.hidden}, engine.end_layer
        position += len(chunk)
    return out


@pytest.mark.parametrize(
    "splits, layer_loop",
    [([(0, 4)], "scan"), ([(0, 3), (2, 4)], "scan"), ([(0, 1), (1, 2), (2, 3), (3, 4)], "scan"), ([(0, 2), (1, 4)], "unroll")],
)  # overlapping ranges: the next stage runs only its rest
def test_staged_cached_decode_equals_full_recompute(reference, splits, layer_loop):
    engines = [make_engine(s, e, layer_loop) for s, e in splits]
    for engine in engines:
        engine.add_request("r")
    out = run_chain(engines, "r", [PROMPT[:8], PROMPT[8:]], 0)  # two prefill chunks
    sequence = list(PROMPT)
    for step in range(5):
        expected = reference(np.asarray(sequence, np.int32))[-1]
        np.testing.assert_allclose(out.logits, expected, atol=ATOL)
        assert out.next_token == int(np.argmax(expected))
        sequence.append(out.next_token)
        out = run_chain(engines, "r", [[out.next_token]], len(sequence) - 1)


def test_chunked_prefill_equals_one_shot():
    one_shot = make_engine(0, 4, prefill_buckets=(16,))
    chunked = make_engine(0, 4, prefill_buckets=(4,))
    for engine in (one_shot, chunked):
        engine.add_request("r")
    (a,) = one_shot.step([StepInput("r", 0, 0, token_ids=PROMPT)])
    for begin in range(0, len(PROMPT), 4):
        (b,) = chunked.step([StepInput("r", 0, begin, token_ids=PROMPT[begin : begin + 4])])
    np.testing.assert_allclose(a.logits, b.logits, atol=ATOL)
    position = len(PROMPT)
    for _ in range(3):
        (a,) = one_shot.step([StepInput("r", 0, position, token_ids=np.array([a.next_token]))])
        (b,) = chunked.step([StepInput("r", 0, position, token_ids=np.array([b.next_token]))])
        np.testing.assert_allclose(a.logits, b.logits, atol=ATOL)
        position += 1


def test_a_prompt_from_position_0_attends_over_its_own_keys_as_over_the_cache_window():
    """chunk_attention (a batch of prompts that all start at position 0: T x T keys, queries in
    blocks, 300 tokens = 128 + 128 + 44) equals window_attention over a cache window holding the
    same keys and other values past them, for every valid query of a row padded after 100 tokens.
    Both jitted, as the step programs run them (eagerly, each op of each query block compiled alone)."""
    chunk, window_of = jax.jit(chunk_attention), jax.jit(window_attention)
    rng = np.random.default_rng(0)
    b, t, heads, kv_heads, dim, ctx = 2, 300, 6, 2, 8, 320
    q = jnp.asarray(rng.standard_normal((b, t, heads, dim), np.float32))
    keys, values = (jnp.asarray(rng.standard_normal((b, ctx, kv_heads, dim), np.float32)) for _ in range(2))
    ours = chunk(q, keys[:, :t], values[:, :t])
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    window = window_of(q, keys, values, positions)
    np.testing.assert_allclose(np.asarray(ours[0]), np.asarray(window[0]), atol=1e-5)
    # row 1 is valid for 100 tokens: its padding's keys are other values, and no valid query reads them
    padded_keys = keys.at[1, 100:].set(7.0)
    np.testing.assert_allclose(np.asarray(chunk(q, padded_keys[:, :t], values[:, :t])[1, :100]), np.asarray(window[1, :100]), atol=1e-5)


def test_a_batch_mixing_a_new_prompt_and_a_continued_one_equals_each_alone():
    """A prompt chunk at position 0 beside a later chunk of another prompt: the step reads the
    cache window for both (not only its own keys) and each row gets what it gets alone."""
    batched = make_engine(0, 4, prefill_buckets=(8,), prefill_batch_buckets=(2,))
    alone = make_engine(0, 4, prefill_buckets=(8,))
    for engine in (batched, alone):
        engine.add_request("a")
        engine.step([StepInput("a", 0, 0, token_ids=PROMPT[:8])])
    batched.add_request("b")
    outs = batched.step([StepInput("a", 0, 8, token_ids=PROMPT[8:]), StepInput("b", 0, 0, token_ids=PROMPT[3:10])])
    (ref_a,) = alone.step([StepInput("a", 0, 8, token_ids=PROMPT[8:])])
    alone.add_request("b")
    (ref_b,) = alone.step([StepInput("b", 0, 0, token_ids=PROMPT[3:10])])
    np.testing.assert_allclose(outs[0].logits, ref_a.logits, atol=ATOL)
    np.testing.assert_allclose(outs[1].logits, ref_b.logits, atol=ATOL)


def test_padded_batch_equals_unpadded():
    prompts = {"a": PROMPT[:5], "b": PROMPT, "c": PROMPT[3:10]}
    batched = make_engine(0, 4, prefill_buckets=(16,), prefill_batch_buckets=(4,), decode_buckets=(4,))
    alone = make_engine(0, 4, prefill_buckets=(16,))
    for rid in prompts:
        batched.add_request(rid)
    outs = batched.step([StepInput(rid, 0, 0, token_ids=p) for rid, p in prompts.items()])
    decoded = batched.step([StepInput(o.request_id, 0, len(prompts[o.request_id]), token_ids=np.array([o.next_token])) for o in outs])
    for (rid, prompt), out, dec in zip(prompts.items(), outs, decoded):
        alone.add_request(rid)
        (ref,) = alone.step([StepInput(rid, 0, 0, token_ids=prompt)])
        np.testing.assert_allclose(out.logits, ref.logits, atol=ATOL)
        (ref_dec,) = alone.step([StepInput(rid, 0, len(prompt), token_ids=np.array([ref.next_token]))])
        np.testing.assert_allclose(dec.logits, ref_dec.logits, atol=ATOL)
        alone.release(rid)


@pytest.mark.parametrize("layer_loop", ["scan", "unroll"])
def test_partial_inference_mixed_batch_equals_slice(layer_loop):
    """Stage [0, 3) runs request A from layer 0 and request B from layer 2 in one batch."""
    stage = make_engine(
        0, 3, layer_loop, prefill_buckets=(16,), prefill_batch_buckets=(2,), decode_buckets=(2,), kv_layout="contiguous"
    )  # the check below reads slots
    head, tail, whole = make_engine(0, 2), make_engine(2, 3, prefill_buckets=(16,)), make_engine(0, 3)
    for engine, rids in ((stage, "AB"), (head, "B"), (tail, "B"), (whole, "A")):
        for rid in rids:
            engine.add_request(rid)
    prompt_b = PROMPT[2:9]
    (hidden_b,) = head.step([StepInput("B", 0, 0, token_ids=prompt_b)])
    out_a, out_b = stage.step([StepInput("A", 0, 0, token_ids=PROMPT[:8]), StepInput("B", 2, 0, hidden=hidden_b.hidden)])
    (ref_a,) = whole.step([StepInput("A", 0, 0, token_ids=PROMPT[:8])])
    (ref_b,) = tail.step([StepInput("B", 2, 0, hidden=hidden_b.hidden)])
    np.testing.assert_allclose(out_a.hidden, ref_a.hidden, atol=ATOL)
    np.testing.assert_allclose(out_b.hidden, ref_b.hidden, atol=ATOL)
    # decode one token each, again mixed
    (hidden_b,) = head.step([StepInput("B", 0, 7, token_ids=np.array([5]))])
    out_a, out_b = stage.step([StepInput("A", 0, 8, token_ids=np.array([7])), StepInput("B", 2, 7, hidden=hidden_b.hidden)])
    (ref_a,) = whole.step([StepInput("A", 0, 8, token_ids=np.array([7]))])
    (ref_b,) = tail.step([StepInput("B", 2, 7, hidden=hidden_b.hidden)])
    np.testing.assert_allclose(out_a.hidden, ref_a.hidden, atol=ATOL)
    np.testing.assert_allclose(out_b.hidden, ref_b.hidden, atol=ATOL)
    # skipped layers (0, 1) hold no KV for B; its layer 2 does
    slot_b = stage._requests["B"].slot
    k = np.asarray(stage.cache.k)
    assert not k[:2, slot_b].any()
    assert np.any(k[2, slot_b, :8] != 0, axis=(1, 2)).all()  # positions 0..7 written
    assert not k[2, slot_b, 8:].any()


def test_partial_inference_leaves_skipped_rows_unchanged():
    """A request entering a stage at its last layer gets exactly that one layer applied."""
    stage, single = make_engine(1, 4), make_engine(3, 4)
    stage.add_request("r")
    single.add_request("r")
    hidden = np.random.default_rng(0).standard_normal((6, CFG.hidden_size)).astype(np.float32)
    (a,) = stage.step([StepInput("r", 3, 0, hidden=hidden)])
    (b,) = single.step([StepInput("r", 3, 0, hidden=hidden)])
    np.testing.assert_allclose(a.logits, b.logits, atol=ATOL)
    assert a.next_token == b.next_token


def test_no_recompilation_in_steady_state():
    # a config of its own: programs compiled for identical stages elsewhere would be reused
    engine = make_engine(
        0,
        4,
        config=CFG.with_overrides(name="tiny-steady"),
        max_slots=4,
        max_seq_len=64,
        prefill_buckets=(8,),
        prefill_batch_buckets=(2,),
        decode_buckets=(1, 4),
        context_buckets=(32, 64),
    )
    compiled = engine.warmup()
    assert compiled == (2 + 1) * 2 and engine.compile_count == compiled
    rng = np.random.default_rng(1)
    position: dict[str, int] = {}
    entry: dict[str, int] = {}
    for step in range(30):
        if engine.free_slots and rng.random() < 0.5:
            rid = f"q{step}"
            engine.add_request(rid, SamplingParams(temperature=float(rng.random()), top_k=5, seed=step))
            position[rid], entry[rid] = 0, int(rng.choice([0, 2]))
        items = []
        for rid in list(position):
            n = int(rng.integers(2, 9)) if position[rid] < 12 else 1
            if position[rid] + n > 64:
                engine.release(rid)
                del position[rid]
                continue
            payload = (
                {"token_ids": rng.integers(0, 256, n).astype(np.int32)}
                if entry[rid] == 0
                else {"hidden": rng.standard_normal((n, CFG.hidden_size)).astype(np.float32)}
            )
            items.append(StepInput(rid, entry[rid], position[rid], **payload))
            position[rid] += n
        if items:
            outs = engine.step(items)
            assert [o.request_id for o in outs] == [i.request_id for i in items]
    assert engine.compile_count == compiled


def test_compiles_are_counted_and_shared_between_identical_engines():
    config = CFG.with_overrides(name="tiny-count")
    first, twin = make_engine(0, 4, config=config), make_engine(0, 4, config=config)
    for engine, expected in ((first, 2), (twin, 0)):  # one prefill + one decode bucket, then reuse
        assert engine.compile_count == 0
        engine.add_request("r")
        engine.step([StepInput("r", 0, 0, token_ids=PROMPT[:3])])
        engine.step([StepInput("r", 0, 3, token_ids=PROMPT[3:4])])
        assert engine.compile_count == expected


def test_slots_capacity_and_release():
    engine = make_engine(1, 3, max_slots=2, max_seq_len=32)
    assert engine.kv_capacity_token_layers == 2 * 32 * 2
    assert engine.kv_cache_bytes == 2 * 32 * 2 * CFG.kv_bytes_per_token_per_layer
    assert {engine.add_request("a"), engine.add_request("b")} == {0, 1}
    assert engine.free_slots == 0
    with pytest.raises(OverloadedError):
        engine.add_request("c")
    engine.release("a")
    assert engine.free_slots == 1 and engine.add_request("c") in (0, 1)
    with pytest.raises(RequestError, match="not held"):
        engine.release("zzz")
    assert slots_for_kv_budget(CFG, 2, engine.kv_cache_bytes, 32) == 2
    weights = random_stage_weights(CFG, 1, 3)
    sized = StageEngine.for_kv_budget(CFG, 1, 3, weights, 3 * engine.kv_cache_bytes // 2 + 1, 16)
    assert sized.max_slots == 6 and sized.kv_capacity_token_layers == 6 * 16 * 2
    with pytest.raises(ConfigError, match="holds no slot"):
        StageEngine.for_kv_budget(CFG, 1, 3, weights, 100, 16)


@pytest.mark.parametrize(
    "bad, message",
    [
        (StepInput("x", 0, 0, token_ids=np.array([1])), "not held"),
        (StepInput("r", 0, 1, token_ids=np.array([1])), "position 1"),
        (StepInput("r", 4, 0, token_ids=np.array([1])), "outside"),
        (StepInput("r", 1, 0, token_ids=np.array([1])), "hidden"),
        (StepInput("r", 0, 0, token_ids=np.array([CFG.vocab_size])), "out of range"),
        (StepInput("r", 0, 0, token_ids=np.arange(9)), "max_chunk_tokens"),
        (StepInput("r", 1, 0, hidden=np.zeros((2, 3), np.float32)), "shape"),
    ],
)
def test_bad_step_inputs_raise_request_error(bad, message):
    engine = make_engine(0, 4)
    engine.add_request("r")
    with pytest.raises(RequestError, match=message):
        engine.step([bad])


def test_entry_layer_is_fixed_and_sequence_bounded():
    engine = make_engine(0, 4, max_seq_len=8)
    engine.add_request("r")
    engine.step([StepInput("r", 0, 0, token_ids=PROMPT[:7])])
    with pytest.raises(RequestError, match="entered at layer 0"):
        engine.step([StepInput("r", 2, 7, hidden=np.zeros((1, CFG.hidden_size), np.float32))])
    with pytest.raises(RequestError, match="max_seq_len"):
        engine.step([StepInput("r", 0, 7, token_ids=np.array([1, 2]))])


def test_weights_must_match_the_stage():
    weights = random_stage_weights(CFG, 0, 2)
    with pytest.raises(ConfigError, match="weights hold layers"):
        StageEngine(CFG, 0, 3, weights, max_slots=1, max_seq_len=8)
    with pytest.raises(ConfigError, match="layer range"):
        random_stage_weights(CFG, 2, 2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_stages_match_float32(reference, dtype):
    """Two half-precision stages give the float32 model's logits up to rounding: random weights
    are drawn in float32 and cast, so every dtype holds the same model."""
    config = CFG.with_overrides(dtype=dtype)
    head, tail = make_engine(0, 2, config=config), make_engine(2, 4, config=config)
    for engine in (head, tail):
        engine.add_request("r")
        assert engine.cache.k.dtype == jnp.dtype(dtype)
    (mid,) = head.step([StepInput("r", 0, 0, token_ids=PROMPT[:8])])
    assert mid.hidden.dtype == np.dtype(jnp.dtype(dtype))
    (out,) = tail.step([StepInput("r", 2, 0, hidden=mid.hidden)])
    expected = reference(PROMPT[:8])[-1]
    assert np.isfinite(out.logits).all()
    np.testing.assert_allclose(out.logits, expected, atol=0.15)
    assert out.next_token == int(np.argmax(expected))


def test_narrow_models_compile_at_the_quickest_level_and_real_ones_at_the_default() -> None:
    """default_compiler_options: XLA's level 0 without the MLIR fusion emitters for models under
    4 MiB of weights per layer on the CPU (the random models of tests and --emulate), the
    defaults for real checkpoints; an engine
    given no options takes them, one given options keeps its own."""
    from helix_jax.model.engine import default_compiler_options
    from helix_jax.modelconfig import preset

    assert default_compiler_options(CFG) == {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    assert default_compiler_options(preset("smollm2-135m")) is None
    assert make_engine(0, 4, compiler_options=None)._program_key[-1] == default_compiler_options(CFG)
    assert make_engine(0, 4, compiler_options={"xla_cpu_enable_fast_math": False})._program_key[-1] == {"xla_cpu_enable_fast_math": False}
