"""GGUF tokenizers and chat templates, checked against Hugging Face transformers on a real file
(SmolLM2-135M-Instruct, skipped when absent) and against hand-computed ids on small GGUF files
written here; message validation; the byte and tokenizer.json tokenizers' chat templates."""

from __future__ import annotations

import ast
import json
import logging
import random
from pathlib import Path

import pytest

from helix_jax.errors import CheckpointError, RequestError
from helix_jax.model.chat_template import ChatTemplate, validate_messages
from helix_jax.model.gguf_vocab import build_vocab
from helix_jax.model.tokenizer import ByteTokenizer, GGUFTokenizer, HFTokenizer, load_tokenizer
from helix_jax.modelconfig import PRESETS, TINY_BOS, TINY_EOS

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


# ---------------------------------------------------------------------------------------------
# The real file, against transformers


@pytest.fixture(scope="module")
def smollm():
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


# ---------------------------------------------------------------------------------------------
# Small GGUF files written here

S = "\u2581"
BYTES = [f"<0x{b:02X}>" for b in range(256)]
# id: 0 <unk>, 1 <s>, 2 </s>, 3..258 bytes, then pieces, then the user-defined <tool>.
PIECES = [
    (S, -1.0),
    ("h", -2.0),
    ("e", -2.0),
    ("l", -2.0),
    ("o", -2.0),
    ("w", -2.0),
    ("r", -2.0),
    ("d", -2.0),
    ("ll", -5.0),
    ("he", -6.0),
    ("hell", -7.0),
    ("hello", -8.0),
    (S + "hello", -9.0),
    ("or", -10.0),
    (S + "w", -11.0),
    (S + "wor", -12.0),
]
SPM_TOKENS = ["<unk>", "<s>", "</s>"] + BYTES + [p for p, _ in PIECES] + ["<tool>"]
SPM_SCORES = [0.0, 0.0, 0.0] + [0.0] * 256 + [s for _, s in PIECES] + [0.0]
SPM_TYPES = [2, 3, 3] + [6] * 256 + [1] * len(PIECES) + [4]
ID = {t: i for i, t in enumerate(SPM_TOKENS)}


def _write_gguf(path: Path, kv: dict) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in kv.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


SPM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def _spm_kv(**changes) -> dict:
    kv = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": SPM_TOKENS,
        "tokenizer.ggml.scores": SPM_SCORES,
        "tokenizer.ggml.token_type": SPM_TYPES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
        "tokenizer.chat_template": SPM_TEMPLATE,
    }
    kv.update(changes)
    return {k: v for k, v in kv.items() if v is not None}


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    return load_tokenizer(PRESETS["llama-2-7b"], _write_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", _spm_kv()))


def test_sentencepiece_gguf_encodes_by_score(spm):
    assert spm.add_bos and spm.bos_token_id == 1 and spm.eos_token_id == 2
    # "▁hello▁world": the highest-scored merges first; "▁world" is not a token, "▁wor" is.
    assert spm.encode("hello world", add_bos=False) == [ID[S + "hello"], ID[S + "wor"], ID["l"], ID["d"]]
    assert spm.encode("hello world") == [1, ID[S + "hello"], ID[S + "wor"], ID["l"], ID["d"]]
    assert spm.encode("hello", add_bos=False, add_eos=True) == [ID[S + "hello"], 2]
    assert spm.encode("hell", add_bos=False) == [ID[S], ID["hell"]]  # no "▁hell"
    # characters outside the vocabulary fall back to their UTF-8 bytes
    assert spm.encode("hé", add_bos=False) == [ID[S], ID["h"], ID["<0xC3>"], ID["<0xA9>"]]
    assert spm.encode("  he", add_bos=False) == [ID[S], ID[S], ID[S], ID["he"]]
    # control and user-defined tokens match whole; text after one gets its own space prefix
    assert spm.encode("<s>hello</s>", add_bos=False) == [1, ID[S + "hello"], 2]
    assert spm.encode("he<tool>he", add_bos=False) == [ID[S], ID["he"], ID["<tool>"], ID[S], ID["he"]]


def test_sentencepiece_gguf_decodes(spm):
    assert spm.decode([1, ID[S + "hello"], ID[S + "wor"], ID["l"], ID["d"], 2]) == "hello world"
    assert spm.decode([ID[S], ID["h"], ID["<0xC3>"], ID["<0xA9>"]]) == "hé"
    assert spm.decode([ID[S + "hello"], ID["<tool>"], 0]) == "hello<tool>"  # <unk> is special, <tool> not
    assert spm.decode([ID["<0xC3>"]]) == "\ufffd"  # a lone continuation byte
    for s in ["hello world", "hé llo", "  he  ", "héllo wörld 😀"]:
        assert spm.decode(spm.encode(s)) == s
    # as llama.cpp: the space prefixed to the text after a special token comes back on decode
    assert spm.decode(spm.encode("he<tool>he")) == "he<tool> he"


def test_sentencepiece_gguf_chat(spm):
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "he"}]
    text = spm.render_chat(messages, add_generation_prompt=False)
    assert text == "<s>[user] hello</s>[assistant] he</s>"
    assert spm.encode_chat(messages, add_generation_prompt=False)[0] == 1  # the template's BOS, only one
    assert spm.encode_chat(messages).count(1) == 1
    assert spm.stop_token_ids == frozenset({2})


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.model": "wordpiece"}, "tokenizer.ggml.model"),
        ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
        ({"tokenizer.ggml.scores": None}, "tokenizer.ggml.scores"),
        ({"tokenizer.ggml.token_type": [1, 2]}, "tokenizer.ggml.token_type"),
        ({"tokenizer.ggml.eos_token_id": 100000}, "tokenizer.ggml.eos_token_id"),
        ({"tokenizer.chat_template": "{% for m in messages %}"}, "tokenizer.chat_template"),
    ],
)
def test_bad_gguf_metadata_names_the_key(tmp_path, changes, key):
    path = _write_gguf(tmp_path / "bad.gguf", _spm_kv(**changes))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        GGUFTokenizer(path)


def test_missing_or_corrupt_gguf_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(PRESETS["tiny"], tmp_path / "absent.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="cannot read GGUF file"):
        load_tokenizer(PRESETS["tiny"], tmp_path / "junk.gguf")


def _byte_level_kv(pre: str | None, merges: list[str]) -> dict:
    """A byte-level vocabulary of the printable ASCII characters (GPT-2 spells most bytes as
    themselves; the space is "Ġ"), plus the merged pieces."""
    chars = [chr(c) for c in range(33, 127)] + ["Ġ"]
    tokens = ["<|endoftext|>"] + chars + [m.replace(" ", "") for m in merges]
    kv = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1),
        "tokenizer.ggml.eos_token_id": 0,
    }
    if pre is not None:
        kv["tokenizer.ggml.pre"] = pre
    return kv


def test_byte_level_split_follows_pre(caplog):
    merges = ["1 2", ", h", "Ġ h"]

    def pieces(pre, text):
        vocab = build_vocab(_byte_level_kv(pre, merges))
        return [vocab.tokens[i] for i in vocab.tokenizer.encode(text, add_special_tokens=False).ids]

    assert pieces("gpt2", "12,h h") == ["12", ",", "h", "Ġh"]
    assert pieces(None, "12,h h") == ["12", ",", "h", "Ġh"]  # no pre: llama.cpp's "default", GPT-2's split
    assert pieces("smollm", "12,h h") == ["1", "2", ",", "h", "Ġh"]  # digits one by one
    assert pieces("llama-bpe", "12,h h") == ["12", ",h", "Ġh"]  # punctuation joins the word
    assert pieces("llama-bpe", "1234") == ["12", "3", "4"]  # at most 3 digits a piece
    with caplog.at_level(logging.WARNING, logger="helix_jax.model.gguf_vocab"):
        assert pieces("no-such-pre", "12,h h") == ["12", ",", "h", "Ġh"]
    assert "no-such-pre" in caplog.text
    vocab = build_vocab(_byte_level_kv("gpt2", merges))
    assert vocab.tokenizer.encode("a<|endoftext|>b", add_special_tokens=False).ids == [vocab.tokens.index("a"), 0, vocab.tokens.index("b")]
    assert vocab.tokenizer.decode([vocab.tokens.index("Ġh"), 0], skip_special_tokens=True) == " h"
    with pytest.raises(CheckpointError, match=r"tokenizer\.ggml\.merges"):
        build_vocab({k: v for k, v in _byte_level_kv("gpt2", merges).items() if k != "tokenizer.ggml.merges"})


# ---------------------------------------------------------------------------------------------
# Messages, the byte tokenizer's template, tokenizer.json templates


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "empty"),
        ("hello", "must be a list"),
        (None, "must be a list"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\]\.role 'robot'"),
        ([{"content": "x"}], r"role None"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}], r"messages\[1\]\.content must be a string"),
        ([{"role": "user", "content": None}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user"}], r"messages\[0\] has no content"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "'image_url'"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"content\[0\]\.text must be a string"),
    ],
)
def test_invalid_messages_raise_request_error(messages, problem):
    with pytest.raises(RequestError, match=problem):
        validate_messages(messages)
    with pytest.raises(RequestError, match=problem):
        ByteTokenizer().render_chat(messages)


def test_valid_messages_are_normalized():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert validate_messages(parts) == [{"role": "user", "content": "a\nb"}]
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}
    assert validate_messages([call, {"role": "tool", "content": "42"}])[0] == {**call, "content": ""}


def test_byte_tokenizer_chat():
    tok = ByteTokenizer()
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hé"}]
    text = tok.render_chat(messages)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhé<|im_end|>\n<|im_start|>assistant\n"
    assert tok.render_chat(messages, add_generation_prompt=False) == text[: -len("<|im_start|>assistant\n")]
    assert tok.encode_chat(messages) == [TINY_BOS] + list(text.encode("utf-8"))
    assert tok.stop_token_ids == frozenset({TINY_EOS})
    assert tok.encode("ab") == tok.encode("ab", add_bos=True) == [TINY_BOS, 97, 98]
    assert tok.encode("ab", add_bos=False) == [97, 98]


def test_template_environment_matches_hf():
    template = ChatTemplate(
        "{% for m in messages %}\n  {% if m %}{{ m['content'] | tojson }}{% endif %}\n{% endfor %}"
        "{% if messages | length > 1 %}{{ raise_exception('only one message') }}{% endif %}"
        "{{ strftime_now('%Y') | length }}"
    )
    assert template.render([{"role": "user", "content": 'é"x'}]) == '"é\\"x"4'  # trim/lstrip blocks
    with pytest.raises(RequestError, match="only one message"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    sneaky = ChatTemplate("{{ messages.append(1) }}")
    with pytest.raises(RequestError):  # the environment is immutable and sandboxed
        sneaky.render([{"role": "user", "content": "a"}])


def test_hf_tokenizer_reads_chat_template(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "<|im_end|>": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>", "<|im_end|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = PRESETS["llama-2-7b"]
    plain = load_tokenizer(config, tmp_path)
    assert isinstance(plain, HFTokenizer) and plain.stop_token_ids == frozenset({2})
    with pytest.raises(RequestError, match="no chat template"):
        plain.render_chat([{"role": "user", "content": "hello"}])
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }} <|im_end|> {% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    hf = load_tokenizer(config, tmp_path)
    assert hf.render_chat([{"role": "user", "content": "hello world"}]) == "<s>hello world <|im_end|> "
    assert hf.encode_chat([{"role": "user", "content": "hello world"}]) == [1, 3, 4, 5]
    assert hf.stop_token_ids == frozenset({2, 5})
    assert hf.encode("hello") == [1, 3] and hf.encode("hello", add_bos=False) == [3]


def test_tokenizer_modules_do_not_import_jax():
    root = Path(__file__).resolve().parent.parent / "helix_jax" / "model"
    for name in ("tokenizer.py", "gguf_vocab.py", "chat_template.py"):
        tree = ast.parse((root / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        heavy = {m for m in imported if m.split(".")[0] in ("jax", "flax")}
        local = {m for m in imported if m.startswith("helix_jax.model.")}
        assert not heavy and local <= {"helix_jax.model.chat_template", "helix_jax.model.gguf_vocab"}, name
