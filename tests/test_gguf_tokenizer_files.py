"""GGUF tokenizers against hand-computed ids on small GGUF files written here: a SentencePiece
vocabulary (encode by score, byte fallback, special tokens, decode, chat template), metadata
errors that name the bad key, missing and corrupt files, and the byte-level pre-tokenizer split
each `tokenizer.ggml.pre` selects. The real SmolLM2 file is tests/test_gguf_tokenizer.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helix_jax.errors import CheckpointError
from helix_jax.model.gguf_vocab import build_vocab
from helix_jax.model.tokenizer import GGUFTokenizer, load_tokenizer
from helix_jax.modelconfig import PRESETS

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
