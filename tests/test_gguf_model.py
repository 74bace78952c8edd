"""The real default model (SmolLM2-135M-Instruct, GGUF) against Hugging Face transformers loading
the same file (dequantized, fp32), a reference no one here wrote: greedy continuations token for
token, last-position logits, and stages that read only their own layers.

Needs the cached model (`make install` or `helix-jax models pull smollm2-135m`) and the test
extras (transformers, gguf, torch); skipped with the reason otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import import_when_used

from helix_jax.errors import CheckpointError
from helix_jax.models import model_file

transformers = import_when_used("transformers")
torch = import_when_used("torch")

try:
    MODEL_PATH = model_file("smollm2-135m")
except CheckpointError as exc:  # not cached: say how to get it
    pytest.skip(str(exc), allow_module_level=True)

RAW_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,"]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
]
NEW_TOKENS = 32
LOGIT_TOL = 2e-3  # absolute, on fp32 logits of magnitude ~10-30 (measured: ~6e-5)


@pytest.fixture(scope="module")
def reference(transformers_gguf):
    """(transformers model, transformers tokenizer) of the same .gguf."""
    kwargs = dict(gguf_file=MODEL_PATH.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL_PATH.parent), **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(MODEL_PATH.parent), dtype=torch.float32, **kwargs).eval()
    return model, tok


@pytest.fixture(scope="module")
def ours():
    """SmolLM2 as `helix-jax generate` runs it (layer loop "auto": unrolled), its programs also
    returning the logits they sample from (test_last_position_logits_agree)."""
    from conftest import smollm2_local

    return smollm2_local("auto", return_logits=True)


def _prompts(tok) -> list[list[int]]:
    chats = [list(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]) for c in CHATS]
    return [tok.encode(p, add_special_tokens=False) for p in RAW_PROMPTS] + chats


def _greedy_batch(model, prompts: list[list[int]]) -> list[list[int]]:
    """transformers' greedy continuations of all prompts in one `generate` call (left-padded,
    masked): NEW_TOKENS each, past EOS too. Checked once against one call per prompt: the
    same tokens, in 3.8 s instead of 10.4 s of one core."""
    import copy

    greedy = copy.deepcopy(model.generation_config)  # all NEW_TOKENS, past EOS too ([]: no stop id)
    greedy.eos_token_id, greedy.max_new_tokens, greedy.do_sample, greedy.pad_token_id = [], NEW_TOKENS, False, 0
    width = max(len(ids) for ids in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    # an explicit mask: the padding, and not the prompt's <|im_end|>, whose id is also the pad id
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, generation_config=greedy)[:, width:].tolist()


def test_config_from_metadata_equals_the_preset() -> None:
    from helix_jax.model.gguf_file import gguf_config
    from helix_jax.modelconfig import preset

    assert gguf_config(MODEL_PATH, name="smollm2-135m") == preset("smollm2-135m")


def test_greedy_continuations_equal_transformers_token_for_token(reference, ours) -> None:
    model, tok = reference
    local, tokenizer = ours
    prompts = _prompts(tok)
    for ids, ref in zip(prompts, _greedy_batch(model, prompts)):
        assert len(ref) == NEW_TOKENS
        got = local.generate(ids, NEW_TOKENS, stop_at_eos=False)
        assert got == ref, (tok.decode(ids), tok.decode(got), tok.decode(ref))
    answer = local.generate(prompts[3], NEW_TOKENS, stop_token_ids=tokenizer.stop_token_ids)
    assert tokenizer.decode(answer) == "The capital of France is Paris."


def test_last_position_logits_agree(reference, ours) -> None:
    """The logits our serving engine samples the first new token from (its prefill program)."""
    model, tok = reference
    local, _ = ours
    for ids in _prompts(tok):
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1].numpy()
        assert np.abs(local.prompt_logits(ids) - ref).max() < LOGIT_TOL


@pytest.mark.parametrize(
    "start,end,outer", [(0, 10, {"token_embd.weight"}), (10, 20, set()), (20, 30, {"output_norm.weight", "token_embd.weight"})]
)
def test_a_stage_dequantizes_only_its_own_layers(start, end, outer) -> None:
    from helix_jax.model.weights import load_stage_weights
    from helix_jax.modelconfig import preset

    weights = load_stage_weights(preset("smollm2-135m"), start, end, str(MODEL_PATH), layer_loop="scan")
    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm")
    want = {f"blk.{layer}.{kind}.weight" for layer in range(start, end) for kind in kinds} | outer
    assert set(weights.tensors_read) == want and len(weights.tensors_read) == len(want)
    params = (end - start) * preset("smollm2-135m").params_per_layer
    table = 49152 * 576 + (576 if end == 30 else 0) if outer else 0
    assert weights.weight_bytes == 4 * (params + table)  # nothing of the other 20 layers is held
