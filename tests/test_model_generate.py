"""Sampling determinism, local generation, tokenizers and the generate/profile commands."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from helix_jax.cli.main import app
from helix_jax.errors import CheckpointError, ConfigError, RequestError
from helix_jax.model import SamplingParams, StageEngine, StepInput, random_stage_weights
from helix_jax.model.generate import LocalModel, generate_local
from helix_jax.model.sampling import sample_tokens
from helix_jax.model.step_program import NARROW_CPU_OPTIONS
from helix_jax.model.tokenizer import ByteTokenizer, load_tokenizer
from helix_jax.modelconfig import PRESETS
from helix_jax.profiles import LatencyProfile

CFG = PRESETS["tiny"]
PROMPT = [256, 72, 101, 108, 108, 111]
FAST = NARROW_CPU_OPTIONS  # XLA CPU's quickest compile (tiny models: a step stays milliseconds)


@pytest.fixture(scope="module")
def weights():
    return random_stage_weights(CFG, 0, CFG.num_layers, seed=0)


sample_jit = jax.jit(sample_tokens)


def _sample(logits, temperature=1.0, top_k=0, top_p=1.0, seeds=range(200)):
    n = len(seeds)
    rows = jnp.asarray(np.tile(np.asarray(logits, np.float32), (n, 1)))
    out = sample_jit(
        rows,
        jnp.full((n,), temperature),
        jnp.full((n,), top_k, jnp.int32),
        jnp.full((n,), top_p),
        jnp.asarray(list(seeds), jnp.uint32),
        jnp.zeros((n,), jnp.int32),
    )
    return set(np.asarray(out).tolist())


def test_sampling_paths_agree_row_by_row():
    """A row samples the same token whether its batch takes the greedy, plain or filtered path."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((4, 50)).astype(np.float32) * 3)
    seeds, positions = jnp.arange(4, dtype=jnp.uint32), jnp.arange(4, dtype=jnp.int32) + 9
    temps = jnp.array([0.0, 0.7, 1.0, 1.3])
    plain = sample_jit(logits, temps, jnp.zeros(4, jnp.int32), jnp.ones(4), seeds, positions)
    # adding a filtered row elsewhere switches the batch to the sorting path
    mixed = sample_jit(logits, temps, jnp.array([0, 0, 0, 5], jnp.int32), jnp.ones(4), seeds, positions)
    assert np.asarray(plain)[:3].tolist() == np.asarray(mixed)[:3].tolist()
    greedy = sample_jit(logits, jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.ones(4), seeds, positions)
    assert np.asarray(greedy).tolist() == np.argmax(np.asarray(logits), -1).tolist()
    assert int(plain[0]) == int(greedy[0])


def test_sampling_frequencies_follow_the_distribution():
    n = 4000
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    rows = jnp.asarray(np.tile(np.log(probs).astype(np.float32), (n, 1)))
    for top_p in (1.0, 0.99):  # plain path, then the sorting path
        out = sample_jit(
            rows, jnp.ones(n), jnp.zeros(n, jnp.int32), jnp.full((n,), top_p), jnp.arange(n, dtype=jnp.uint32), jnp.zeros(n, jnp.int32)
        )
        freq = np.bincount(np.asarray(out), minlength=4) / n
        np.testing.assert_allclose(freq, probs, atol=0.03)


def test_sampling_filters():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert _sample(logits, temperature=0.0) == {0}
    assert _sample(logits) == {0, 1, 2, 3}
    assert _sample(logits, top_k=2) == {0, 1}
    assert _sample(logits, top_p=0.6) == {0, 1}
    assert _sample(logits, top_p=0.5) == {0}
    assert _sample(logits, top_k=3, top_p=0.9) == {0, 1, 2}


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(top_k=-2),
        dict(top_k=1.5),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(seed=-1),
        dict(seed=2**32),
    ],
)
def test_bad_sampling_params(bad):
    ((field, value),) = bad.items()
    with pytest.raises(RequestError, match=f"sampling {field} .*{value!r}"):
        SamplingParams(**bad)


def test_sampling_depends_only_on_seed_and_position(weights):
    """A seeded request samples the same tokens alone or batched with other requests."""
    engine = StageEngine(
        CFG,
        0,
        CFG.num_layers,
        weights,
        max_slots=3,
        max_seq_len=32,
        prefill_buckets=(8,),
        decode_buckets=(3,),
        prefill_batch_buckets=(3,),
        compiler_options=FAST,
    )
    hot = SamplingParams(temperature=1.5, seed=7)

    def run(others: int) -> list[int]:
        rids = ["x"] + [f"o{i}" for i in range(others)]
        for i, rid in enumerate(rids):
            engine.add_request(rid, hot if rid == "x" else SamplingParams(temperature=1.0, seed=i))
        outs = engine.step([StepInput(rid, 0, 0, token_ids=np.asarray(PROMPT, np.int32)) for rid in rids])
        tokens = [outs[0].next_token]
        for pos in range(len(PROMPT), len(PROMPT) + 6):
            outs = engine.step([StepInput(o.request_id, 0, pos, token_ids=np.array([o.next_token])) for o in outs])
            tokens.append(outs[0].next_token)
        for rid in rids:
            engine.release(rid)
        return tokens

    alone, batched = run(0), run(2)
    assert alone == batched
    local = generate_local(CFG, weights, PROMPT, 7, hot, stop_at_eos=False, compiler_options=FAST)
    assert local == alone
    other_seed = generate_local(CFG, weights, PROMPT, 7, SamplingParams(temperature=1.5, seed=8), stop_at_eos=False, compiler_options=FAST)
    assert other_seed != alone


def test_generate_local_chunking_limits_and_eos(weights):
    full = generate_local(CFG, weights, PROMPT * 3, 6, stop_at_eos=False, chunk_tokens=64, compiler_options=FAST)
    assert generate_local(CFG, weights, PROMPT * 3, 6, stop_at_eos=False, chunk_tokens=4, compiler_options=FAST) == full
    assert len(full) == 6
    greedy_top1 = generate_local(
        CFG, weights, PROMPT * 3, 6, SamplingParams(temperature=1.0, top_k=1), stop_at_eos=False, compiler_options=FAST
    )
    assert greedy_top1 == full
    eos = full[2]
    stop = full.index(eos) + 1
    assert generate_local(CFG.with_overrides(eos_token_id=eos), "random:0", PROMPT * 3, 6, compiler_options=FAST) == full[:stop]
    streamed: list[int] = []
    returned = generate_local(CFG, weights, PROMPT, 3, on_token=streamed.append, stop_at_eos=False, compiler_options=FAST)
    assert len(streamed) == 3 and streamed == returned
    with pytest.raises(RequestError, match="max_position_embeddings"):
        generate_local(CFG, weights, PROMPT, CFG.max_position_embeddings)
    with pytest.raises(RequestError):
        generate_local(CFG, weights, [], 3)


def test_prompt_logits_are_what_the_first_token_is_sampled_from(weights):
    whole = LocalModel(CFG, weights, max_seq_len=64, compiler_options=FAST, return_logits=True)
    chunked = LocalModel(CFG, weights, max_seq_len=64, chunk_tokens=4, compiler_options=FAST, return_logits=True)
    logits = whole.prompt_logits(PROMPT * 3)
    assert logits.shape == (CFG.vocab_size,) and logits.dtype == np.float32
    np.testing.assert_allclose(chunked.prompt_logits(PROMPT * 3), logits, atol=1e-4)
    assert whole.generate(PROMPT * 3, 1) == [int(np.argmax(logits))]  # greedy: its argmax
    assert not whole.engine.has_request("local")  # released after each call
    with pytest.raises(RequestError, match="^prompt_logits needs a LocalModel built with return_logits=True$"):
        LocalModel(CFG, weights, max_seq_len=64).prompt_logits(PROMPT)
    with pytest.raises(RequestError, match="^prompt of 0 tokens: expected 1 to 64$"):
        whole.prompt_logits([])


def test_tokenizers(tmp_path):
    byte = ByteTokenizer()
    ids = byte.encode("héllo")
    assert ids[0] == byte.bos_token_id and byte.decode(ids) == "héllo"
    assert load_tokenizer(CFG).decode(ByteTokenizer().encode("abc")) == "abc"
    big = PRESETS["llama-2-7b"]
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(big, tmp_path)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = load_tokenizer(big, tmp_path)
    assert hf.encode("hello world") == [1, 3, 4]
    assert hf.decode([3, 4]) == "hello world"


def test_cli_generate_matches_generate_local():
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--model", "tiny-8", "--prompt-ids", "256,72,105", "--max-tokens", "5", "--local", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    cfg8 = PRESETS["tiny-8"]
    assert payload["model"] == "tiny-8"
    assert payload["ids"] == generate_local(cfg8, "random:0", [256, 72, 105], 5)
    text = runner.invoke(
        app, ["generate", "--model", "tiny-8", "--prompt", "Hi", "--max-tokens", "4", "--temperature", "0.7", "--seed", "3"]
    )
    assert text.exit_code == 0, text.output
    both = runner.invoke(app, ["generate", "--prompt", "a", "--prompt-ids", "1"])
    assert isinstance(both.exception, RequestError)
    local_and_remote = runner.invoke(app, ["generate", "--prompt", "a", "--local", "--endpoint", "x"])
    assert isinstance(local_and_remote.exception, ConfigError)
    no_weights = runner.invoke(app, ["generate", "--model", "llama-2-7b", "--prompt", "a"])
    assert isinstance(no_weights.exception, CheckpointError)
    bad_dtype = runner.invoke(app, ["generate", "--dtype", "int8", "--prompt", "a"])
    assert isinstance(bad_dtype.exception, ConfigError) and "'int8'" in str(bad_dtype.exception)


def test_cli_profile_writes_a_loadable_profile(tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(
        app,
        [
            "profile",
            "--model",
            "tiny",
            "--layers",
            "1",
            "--prefill-tokens",
            "4,8",
            "--decode-batches",
            "1,2",
            "--context-tokens",
            "8",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    profile = LatencyProfile.load(out)
    assert [t for t, _ in profile.prefill] == [4, 8] and [p.batch for p in profile.decode] == [1, 2]
    assert profile.layers_measured == 1 and profile.weight_bytes_per_layer == CFG.weight_bytes_per_layer
    assert all(s > 0 for _, s in profile.prefill) and profile.decode_seconds_per_layer(2) > 0
    assert json.loads(out.read_text())["model"]["hidden_size"] == CFG.hidden_size
    bad = CliRunner().invoke(app, ["profile", "--model", "tiny", "--decode-batches", "1,x"])
    assert isinstance(bad.exception, RequestError) and "--decode-batches" in str(bad.exception)
