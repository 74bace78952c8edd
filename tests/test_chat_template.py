"""Chat messages and templates apart from GGUF files: message validation and normalisation, the
byte tokenizer's built-in ChatML template, the sandboxed template environment, a tokenizer.json
directory's template, and that the tokenizer modules stay free of jax. GGUF templates are
tests/test_gguf_tokenizer.py (a real file) and tests/test_gguf_tokenizer_files.py."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from helix_jax.errors import RequestError
from helix_jax.model.chat_template import ChatTemplate, validate_messages
from helix_jax.model.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from helix_jax.modelconfig import PRESETS, TINY_BOS, TINY_EOS


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
    for name in ("tokenizer.py", "gguf_vocab.py", "chat_template.py", "gguf_reader.py"):
        tree = ast.parse((root / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        heavy = {m for m in imported if m.split(".")[0] in ("jax", "flax")}
        local = {m for m in imported if m.startswith("helix_jax.model.")}
        assert not heavy and local <= {"helix_jax.model.chat_template", "helix_jax.model.gguf_vocab", "helix_jax.model.gguf_reader"}, name
