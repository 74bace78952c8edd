"""The GGUF tokenizer of a real file (SmolLM2-135M-Instruct, skipped when absent) against
Hugging Face transformers: metadata, encode and decode of a few hundred strings, decode of
arbitrary ids, and the chat template. The small GGUF files written in-test are
tests/test_gguf_tokenizer_files.py; messages and other templates, tests/test_chat_template.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from helix_jax.model.tokenizer import GGUFTokenizer, load_tokenizer
from helix_jax.modelconfig import PRESETS

SMOLLM = Path("~/.cache/helix-jax/models/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser()

FIXED = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    " \n ",
    "\r\n",
    "hello",
    "Hello world",
    " hello",
    "hello ",
    "  two leading",
    "trailing two  ",
    "a  b   c    d",
    "tabs\tand\t\ttabs",
    "line1\nline2\n\nline4",
    "mixed \t\n \t whitespace",
    "I'm here, you're there; they'll see we've it's I'd",
    "DON'T SHOUT I'M",
    "12345",
    "3.14159",
    "1,000,000",
    " 42 is the answer",
    "x=1+2*3-4/5",
    "2024-06-01T12:34:56Z",
    "0x1F 0b1010 1e-9",
    "café naïve résumé façade",
    "Ærøskøbing Straße",
    "日本語のテキストです。",
    "中文字符测试",
    "한국어 문장",
    "مرحبا بالعالم",
    "עברית",
    "Привет, мир!",
    "Ελληνικά",
    "हिन्दी",
    "ไทย",
    "emoji 😀🎉👍🏽 👨‍👩‍👧",
    "🏳️‍🌈",
    "flags 🇫🇷🇯🇵",
    "math ∑∫√∞ ≠ ≤",
    "superscripts x² y³ ½ ¼ ① Ⅻ",
    "٣٤٥ arabic-indic digits",
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT * FROM t WHERE id = 'x';",
    '{"key": [1, 2, {"nested": null}]}',
    '<html><body class="x">hi</body></html>',
    '#include <stdio.h>\nint main(){printf("%d\\n", 1);}',
    "$ ls -la | grep '.py' && echo ok",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>\n",
    "text <|im_start|> inside",
    "no<|im_end|>space",
    "<|im_start|><|im_start|>",
    "<|im_start",
    "<repo_name>helix<file_sep>x.py",
    "< |im_start| >",
    "<s> </s> <unk>",
    "\u200b zero width \ufeff",
    "control \x00\x01\x7f chars",
    "ａｂｃ full width",
    "ﬁ ligature",
    "e\u0301 combining",
    "...",
    "!!!???",
    "—–-",
    "“quotes” ‘single’",
    "a" * 50,
    " " * 17,
    "\n" * 9,
    "ab" * 30,
]

POOLS = [
    "0123456789",
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "    \t\n\r",
    ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœ",
    "日本語中文字漢字かなカナ한국어",
    "مرحباعالمשלוםעולם",
    "😀😂🥲🎉👍🏽❤️🚀🌍",
    "²³½¼①Ⅻ٣٤",
    "ĠĊĉâĢ",
]
SPECIAL_PIECES = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "user", "assistant"]


def _strings() -> list[str]:
    """The fixed strings, 170 random ones without numerals, 60 with them (POOLS[0] has the digits)."""
    rng = random.Random(20240614)
    out = list(FIXED)
    for n in range(230):
        pools = POOLS if n >= 170 else [p for p in POOLS if not any(c.isnumeric() for c in p)]
        parts = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.08:
                parts.append(rng.choice(SPECIAL_PIECES))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 12))))
        out.append("".join(parts))
    return out


STRINGS = _strings()

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there. How can I help?"},
        {"role": "user", "content": "Tell me a joke about <|im_end|> tokens."},
    ],
    [
        {"role": "system", "content": "You speak French."},
        {"role": "user", "content": "Bonjour, ça va ?"},
        {"role": "assistant", "content": "Très bien, merci !"},
        {"role": "user", "content": "日本語は？ 😀"},
    ],
    [
        {"role": "user", "content": "  spaces\tand\nnewlines  "},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "def f():\n    return 1"},
    ],
]


@pytest.fixture(scope="module")
def smollm(transformers_gguf):
    """(ours, transformers') tokenizers of the SmolLM2 GGUF file, built once."""
    if not SMOLLM.is_file():
        pytest.skip(f"{SMOLLM} is absent")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    hf = transformers.AutoTokenizer.from_pretrained(str(SMOLLM.parent), gguf_file=SMOLLM.name)
    return load_tokenizer(PRESETS["tiny"], SMOLLM), hf


def _has_numeral(s: str) -> bool:
    return any(c.isnumeric() for c in s)


def test_smollm_metadata(smollm):
    ours, hf = smollm
    assert isinstance(ours, GGUFTokenizer)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (1, 2, 2, 0)
    assert (ours.bos_token_id, ours.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    assert not ours.add_bos and not ours.add_eos
    assert ours.stop_token_ids == frozenset({2})  # EOS is <|im_end|>, the template's end of turn
    assert ours.chat_template == hf.chat_template


def test_smollm_encode_decode_match_transformers(smollm):
    """Equal to transformers on every string without numerals. With tokenizer.ggml.pre "smollm"
    every numeral is a piece of its own before the GPT-2 split (llama.cpp's split, and the Digits
    step of SmolLM2's own tokenizer.json); transformers' GGUF loader drops that step, so there
    " ½" is one piece and "x   1" splits its spaces differently. On strings with numerals ours
    equals transformers' tokenizer with the Digits step put back."""
    from tokenizers import Tokenizer, pre_tokenizers

    ours, hf = smollm
    digits_first = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    digits_first.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), hf.backend_tokenizer.pre_tokenizer]
    )
    differ = 0
    for s in STRINGS:
        plain = ours.encode(s, add_bos=False)
        if _has_numeral(s):
            expected = digits_first.encode(s, add_special_tokens=False).ids
            differ += expected != hf.encode(s, add_special_tokens=False)
        else:
            expected = hf.encode(s, add_special_tokens=False)
            assert ours.encode(s) == hf(s)["input_ids"], s
        assert plain == expected, s
        assert ours.encode(s, add_bos=True) == [1] + plain
        assert ours.decode(plain) == hf.decode(plain, skip_special_tokens=True), s
    assert sum(not _has_numeral(s) for s in STRINGS) >= 200 and differ < 40
    assert ours.encode("x² ½") == [104, 19133, 216, 16738]  # x ² Ġ ½; transformers: x ² Ġ\xc2 \xbd
    assert hf.encode("x² ½", add_special_tokens=False) == [104, 19133, 3351, 138]
    assert ours.encode("<|im_start|>user") == [1, 4093]  # specials in text match whole
    assert ours.decode([1, 4093, 2]) == "user"  # and are skipped on decode


def test_smollm_decode_of_arbitrary_ids_matches_transformers(smollm):
    ours, hf = smollm
    rng = random.Random(7)
    for _ in range(50):
        ids = [rng.randrange(49152) if rng.random() < 0.9 else rng.randrange(17) for _ in range(rng.randint(1, 20))]
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), ids


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm_chat_matches_apply_chat_template(smollm, add_generation_prompt):
    ours, hf = smollm
    for messages in CONVERSATIONS:
        text = ours.render_chat(messages, add_generation_prompt=add_generation_prompt)
        assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.encode_chat(messages, add_generation_prompt=add_generation_prompt) == hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    default_system = ours.render_chat([{"role": "user", "content": "x"}])
    assert default_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert ours.render_chat(parts) == ours.render_chat([{"role": "user", "content": "a\nb"}])
