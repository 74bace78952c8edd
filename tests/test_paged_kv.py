"""The paged KV cache: paged == contiguous (token for token, logits within LOGITS_ATOL) for
mixed batches, partial inference, chunked and one-shot prefill; pool limits (pages in use never
exceed the pool, freed pages are reused, a request that cannot get pages waits, nothing is
written out of bounds); no recompilation."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from helix_jax.errors import ConfigError, OverloadedError
from helix_jax.model import SamplingParams, StageEngine, StepInput, random_stage_weights
from helix_jax.model.step_program import NARROW_CPU_OPTIONS
from helix_jax.modelconfig import PRESETS

CFG = PRESETS["tiny"]  # 4 layers, width 64, GQA 4/2, fp32
LOGITS_ATOL = 1e-5  # fp32: the two layouts gather the same keys in the same order
FAST_COMPILE = NARROW_CPU_OPTIONS  # XLA CPU's quickest compile (tiny models: a step stays milliseconds)
PROMPT = np.array([256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33], np.int32)  # 14


def make(start: int, end: int, layout: str, config=CFG, **kw) -> StageEngine:
    kw.setdefault("max_slots", 4)
    kw.setdefault("max_seq_len", 32)
    kw.setdefault("prefill_buckets", (8,))
    kw.setdefault("decode_buckets", (4,))
    kw.setdefault("prefill_batch_buckets", (2,))
    kw.setdefault("compiler_options", FAST_COMPILE)
    if layout == "paged":
        kw.setdefault("page_size", 4)
    weights = random_stage_weights(config, start, end, seed=0, layer_loop=kw.pop("layer_loop", "scan"))
    return StageEngine(config, start, end, weights, return_logits=True, kv_layout=layout, **kw)


def pages_of(pool, total: int) -> np.ndarray:
    """A pool `[kv_heads, layers, pages, page_size, head_dim]` as `[global page, kv_heads,
    page_size, head_dim]` (global page id = layer slab x pages + page)."""
    pool = np.asarray(pool)
    return np.moveaxis(pool.reshape((pool.shape[0], total) + pool.shape[3:]), 0, 1)


def run_chain(engines, items):
    """items: [(rid, token_ids, position, sample)] through a pipeline, each stage entered where
    the previous one ended. Returns the last stage's outputs by request id."""
    payloads = {rid: ({"token_ids": np.asarray(ids, np.int32)}, 0) for rid, ids, _, _ in items}
    outs = {}
    for engine in engines:
        step = [StepInput(rid, payloads[rid][1], pos, sample=sample, **payloads[rid][0]) for rid, _, pos, sample in items]
        for out in engine.step(step):
            outs[out.request_id] = out
            payloads[out.request_id] = ({"hidden": out.hidden}, engine.end_layer)
    return outs


def generate(engines, prompts: dict[str, np.ndarray], chunk: int, decode_steps: int):
    """Prefill every prompt in `chunk`-token pieces (all requests in each step), then decode
    greedily together. Returns {rid: [(token, logits), ...]}."""
    for engine in engines:
        for rid in prompts:
            engine.add_request(rid, SamplingParams())
    result = {rid: [] for rid in prompts}
    longest = max(len(p) for p in prompts.values())
    for begin in range(0, longest, chunk):
        items = [(rid, p[begin : begin + chunk], begin, begin + chunk >= len(p)) for rid, p in prompts.items() if begin < len(p)]
        for rid, out in run_chain(engines, items).items():
            if out.next_token is not None:
                result[rid].append((out.next_token, out.logits))
    position = {rid: len(p) for rid, p in prompts.items()}
    for _ in range(decode_steps):
        items = [(rid, [result[rid][-1][0]], position[rid], True) for rid in prompts]
        for rid, out in run_chain(engines, items).items():
            result[rid].append((out.next_token, out.logits))
            position[rid] += 1
    return result


def assert_same(a, b):
    for rid in a:
        assert [t for t, _ in a[rid]] == [t for t, _ in b[rid]], rid
        for (_, la), (_, lb) in zip(a[rid], b[rid]):
            np.testing.assert_allclose(la, lb, atol=LOGITS_ATOL)


MIXED = {"a": PROMPT[:5], "b": PROMPT, "c": PROMPT[3:10]}


@pytest.mark.parametrize("splits, layer_loop", [([(0, 4)], "scan"), ([(0, 3), (2, 4)], "scan"), ([(0, 2), (1, 4)], "unroll")])
def test_paged_equals_contiguous_mixed_batches_and_stage_splits(splits, layer_loop):
    """Several requests prefill and decode in the same steps; overlapping stages run partial
    inference (the second stage entered past its first layer)."""
    results = [generate([make(s, e, layout, layer_loop=layer_loop) for s, e in splits], MIXED, 8, 6) for layout in ("contiguous", "paged")]
    assert_same(*results)


def test_the_pallas_paged_attention_kernel_equals_the_gather():
    """Decode steps read by JAX's Pallas paged-attention kernel (its interpreter on this CPU)
    equal the gather path token for token, with logits within 1e-4 (the kernel's blocked online
    softmax sums in another order): GQA, rows of 1-4 pages, partial inference in the second
    stage, windows of 8 pages split 8 ways."""
    assert make(0, 4, "paged").attention == "gather"  # "auto" off a GPU
    with pytest.raises(ConfigError, match="attention 'pallas' reads a paged KV cache"):
        make(0, 4, "contiguous", attention="pallas")
    with pytest.raises(ConfigError, match=r"^attention must be 'auto', 'gather' or 'pallas', got 'flash'$"):
        make(0, 4, "paged", attention="flash")
    prompts = {"a": PROMPT[:5], "b": PROMPT, "c": PROMPT[3:10]}
    gather, pallas = (
        generate([make(s, e, "paged", attention=att) for s, e in ((0, 3), (2, 4))], prompts, 8, 6) for att in ("gather", "pallas")
    )
    for rid in prompts:
        assert [t for t, _ in gather[rid]] == [t for t, _ in pallas[rid]], rid
        for (_, la), (_, lb) in zip(gather[rid], pallas[rid]):
            np.testing.assert_allclose(la, lb, atol=1e-4)


def test_auto_attention_falls_back_to_the_gather_where_the_kernel_does_not_compile(monkeypatch, caplog):
    """ "auto" on a GPU takes the kernel; where its Triton lowering fails (here: this CPU made to
    look like a GPU, so the kernel is compiled instead of interpreted), warm-up says so once and
    the engine serves on the gather, with the gather's results."""
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    engine = make(0, 4, "paged")
    assert engine.attention == "pallas"
    with caplog.at_level("WARNING", logger="helix_jax.model.engine"):
        engine.warmup()
    assert engine.attention == "gather"
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["paged-attention kernel unavailable here"]
    monkeypatch.undo()
    assert_same(generate([engine], MIXED, 8, 4), generate([make(0, 4, "paged", attention="gather")], MIXED, 8, 4))


@pytest.mark.parametrize("chunk", [3, 8])
def test_paged_chunked_and_one_shot_prefill_equal_contiguous(chunk):
    one_shot = generate([make(0, 4, "contiguous", prefill_buckets=(16,))], {"r": PROMPT}, 16, 4)
    paged = generate([make(0, 4, "paged", prefill_buckets=(8,))], {"r": PROMPT}, chunk, 4)
    assert [t for t, _ in one_shot["r"]] == [t for t, _ in paged["r"]]
    for (_, la), (_, lb) in zip(one_shot["r"], paged["r"]):
        np.testing.assert_allclose(la, lb, atol=2e-4)  # chunking changes summation order


def test_partial_inference_takes_pages_only_for_the_layers_it_runs():
    engine = make(0, 4, "paged", num_pages=8)  # 4 layers x 8 pages of 4 tokens
    assert engine.kv_capacity_token_layers == 4 * 8 * 4 and engine.kv_page_tokens == 4
    engine.add_request("late", reserve_tokens=10, run_start_layer=3)  # 3 pages x 1 layer
    assert engine.pool.pages_available == 32 - 3 and engine.kv_committed_token_layers == 12
    hidden = np.ones((6, CFG.hidden_size), np.float32)
    engine.step([StepInput("late", 3, 0, hidden=hidden)])
    table = engine.pool.table("late")
    assert [len(p) for p in table.pages] == [0, 0, 0, 2] and engine.pool.pages_in_use == 2
    engine.release("late")
    assert engine.pool.pages_available == 32 and engine.pool.pages_in_use == 0


def test_pool_limits_reuse_waiting_and_no_write_out_of_bounds():
    engine = make(0, 4, "paged", num_pages=6, max_slots=4)  # 6 pages of 4 tokens per layer
    total = engine.pool.total_pages
    engine.add_request("a")
    engine.step([StepInput("a", 0, 0, token_ids=PROMPT[:8])])  # 2 pages x 4 layers
    a_pages = sorted(p for pages in engine.pool.table("a").pages for p in pages)
    engine.add_request("b")
    engine.step([StepInput("b", 0, 0, token_ids=PROMPT[:8])])
    engine.step([StepInput("b", 0, 8, token_ids=PROMPT[8:14])])  # b: 4 pages x 4 layers = 16
    assert engine.pool.pages_in_use == 24 == total
    k_before = np.asarray(engine.cache.k).copy()
    # the pool is full: a's next token needs a page it cannot get -> it waits, nothing changes
    more = StepInput("a", 0, 8, token_ids=PROMPT[8:9])
    assert not engine.can_run(more)
    with pytest.raises(OverloadedError):
        engine.step([more])
    assert engine.tokens_cached("a") == 8 and engine.pool.pages_in_use == total
    np.testing.assert_array_equal(np.asarray(engine.cache.k), k_before)
    assert not engine.can_add(reserve_tokens=1)
    engine.release("a")  # a's pages are the next ones handed out
    engine.add_request("c")
    engine.step([StepInput("c", 0, 0, token_ids=PROMPT[:8])])
    c_pages = sorted(p for pages in engine.pool.table("c").pages for p in pages)
    assert c_pages == a_pages
    engine.pool.check()
    # b's pages were not touched by c's writes, and only held pages were ever written
    k = pages_of(engine.cache.k, total)
    before = pages_of(k_before, total)
    for page in (p for pages in engine.pool.table("b").pages for p in pages):
        np.testing.assert_array_equal(k[page], before[page])


def test_unheld_pages_stay_zero():
    engine = make(0, 4, "paged", num_pages=8)
    engine.add_request("r", reserve_tokens=9)
    engine.step(
        [
            StepInput("r", 0, 0, token_ids=PROMPT[:7]),
        ]
    )
    engine.step([StepInput("r", 0, 7, token_ids=PROMPT[7:8])])
    held = {p for pages in engine.pool.table("r").pages for p in pages}
    k = pages_of(engine.cache.k, engine.pool.total_pages).reshape((engine.pool.total_pages, -1))
    assert all(not k[p].any() for p in range(engine.pool.total_pages) if p not in held)
    assert all(k[p].any() for p in held)


def test_paged_no_recompilation_in_steady_state():
    engine = make(
        0,
        4,
        "paged",
        config=CFG.with_overrides(name="tiny-paged-steady"),
        max_seq_len=64,
        decode_buckets=(1, 4),
        context_buckets=(32, 64),
        page_size=16,
    )
    compiled = engine.warmup()
    assert compiled == (2 + 1) * 2 and engine.compile_count == compiled
    rng = np.random.default_rng(1)
    position: dict[str, int] = {}
    for step in range(30):
        if engine.free_slots and rng.random() < 0.5:
            rid = f"q{step}"
            engine.add_request(
                rid, SamplingParams(temperature=float(rng.random()), top_k=5, seed=step), reserve_tokens=int(rng.integers(8, 64))
            )
            position[rid] = 0
        items = []
        for rid in list(position):
            n = int(rng.integers(2, 9)) if position[rid] < 12 else 1
            if position[rid] + n > 64:
                engine.release(rid)
                del position[rid]
                continue
            items.append(StepInput(rid, 0, position[rid], token_ids=rng.integers(0, 256, n).astype(np.int32)))
            position[rid] += n
        if items:
            engine.step(items)
        engine.pool.check()
        assert engine.pool.pages_in_use <= engine.pool.total_pages
    assert engine.compile_count == compiled


def test_real_default_model_paged_equals_contiguous():
    """SmolLM2-135M-Instruct, one set of weights in both layouts, greedy, token for token over a
    two-chunk prompt and 24 new tokens. Both scan their layers (a fifth of the unrolled compile
    time; paged against contiguous with unrolled layers: the tiny model's splits2-unroll above)."""
    from helix_jax.errors import CheckpointError
    from helix_jax.model import load_stage_weights
    from helix_jax.model.generate import LocalModel
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.modelconfig import preset
    from helix_jax.models import model_file

    try:
        model_file("smollm2-135m")
    except CheckpointError as exc:
        pytest.skip(str(exc))
    config = preset("smollm2-135m")
    tokenizer = load_tokenizer(config, "smollm2-135m")
    weights = load_stage_weights(config, 0, config.num_layers, "smollm2-135m", layer_loop="scan")
    paged, contiguous = (LocalModel(config, weights, max_seq_len=256, kv_layout=layout) for layout in ("paged", "contiguous"))
    assert (paged.engine.kv_layout, contiguous.engine.kv_layout) == ("paged", "contiguous")
    prompt = tokenizer.encode("Paint mixing, a short lesson for children. " * 8 + "The three primary colors are")
    assert len(prompt) > paged.chunk  # two prefill chunks, then decode
    expected = paged.generate(prompt, 24, stop_at_eos=False)
    assert contiguous.generate(prompt, 24, stop_at_eos=False) == expected


@pytest.mark.parametrize("layout, layer_loop", [("paged", "unroll"), ("paged", "scan"), ("contiguous", "unroll")])
def test_a_step_updates_the_kv_cache_in_place(layout, layer_loop):
    """No copy of the cache in a compiled step. With the page pool
    reshaped to one flat page axis, XLA's CPU backend copied all of it around each layer's write
    in a one-row step of an unrolled stage (the write becomes a dynamic-update-slice), and a
    SmolLM2 worker's decode step cost O(pool): 261 ms instead of 18 ms."""
    config = CFG.with_overrides(name=f"tiny-in-place-{layout}-{layer_loop}")
    pages = {"num_pages": 64} if layout == "paged" else {}
    engine = make(0, 4, layout, config=config, layer_loop=layer_loop, decode_buckets=(1,), **pages)
    cache_elements = engine.cache.k.size
    for rows, tokens in ((1, 1), (2, 8)):  # a decode and a prefill bucket
        text = engine.lower(rows, tokens, engine.context_buckets[-1]).compile().as_text()
        copies = [
            line.strip()
            for line in text.splitlines()
            if (m := re.search(r"= \w+\[([\d,]+)\]\S* copy\(", line)) and math.prod(int(d) for d in m.group(1).split(",")) == cache_elements
        ]
        assert not copies, copies
        assert "input_output_alias" in text  # the cache is donated: the step writes into the caller's buffer
