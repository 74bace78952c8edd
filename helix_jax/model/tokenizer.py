"""Tokenizers: the byte-level one of the built-in tiny models, Hugging Face `tokenizer.json` and GGUF.

Owns: the `Tokenizer` protocol, `ByteTokenizer` (ids 0..255 are bytes, then TINY_BOS/EOS/PAD;
needs no files; a built-in ChatML template), `HFTokenizer` (wraps the `tokenizers` library,
local files only; the chat template of `tokenizer_config.json`), `GGUFTokenizer` (the vocabulary
and chat template stored in a `.gguf` file's metadata) and `load_tokenizer`, which picks one.
Sits at the edges of the data flow: the coordinator and the HTTP front end encode prompts and
chats and decode outputs. Imports no jax or flax (gguf, tokenizers and jinja2 only when used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from helix_jax.errors import CheckpointError, RequestError
from helix_jax.model.chat_template import CHATML_TEMPLATE, ChatTemplate, end_of_turn_tokens
from helix_jax.modelconfig import TINY_BOS, TINY_EOS, TINY_PAD, ModelConfig, is_tiny


class Tokenizer(Protocol):
    """What the coordinator, the HTTP front end and `generate` need of a tokenizer.

    `stop_token_ids`: ids that end generation (EOS and the chat template's end-of-turn token).
    `render_chat`: the chat template applied to OpenAI-style messages ({"role", "content"}),
    as Hugging Face's `apply_chat_template(..., tokenize=False)` renders it; `encode_chat` is
    its ids, tokenized as HF does (no extra BOS: the template writes its own specials).
    Raises RequestError for a malformed conversation (unknown role, non-string content).
    """

    bos_token_id: int | None
    eos_token_id: int | None
    stop_token_ids: frozenset[int]

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Ids of `text`; add_bos None follows the tokenizer's own setting."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens skipped."""
        ...

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str: ...

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]: ...


class _Chat:
    """render_chat/encode_chat/stop_token_ids from a `ChatTemplate` (None: the model has none)."""

    bos_token_id: int | None
    eos_token_id: int | None
    _chat: ChatTemplate | None
    _specials: dict[str, str | None]  # template variables: bos_token, eos_token, ...

    def _init_chat(self, template: str | None, where: str) -> None:
        self._chat = ChatTemplate(template, where) if template is not None else None
        eot = end_of_turn_tokens(template, self._token_to_id) if template is not None else frozenset()
        eos = {self.eos_token_id} if self.eos_token_id is not None else set()
        self.stop_token_ids = frozenset(eos | eot)

    def _token_to_id(self, token: str) -> int | None:
        return None

    @property
    def chat_template(self) -> str | None:
        return self._chat.source if self._chat is not None else None

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        if self._chat is None:
            raise RequestError("this model has no chat template: send a plain prompt instead of messages")
        return self._chat.render(messages, add_generation_prompt, **self._specials)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        return self._encode_plain(self.render_chat(messages, add_generation_prompt))

    def _encode_plain(self, text: str) -> list[int]:  # the rendered chat, no BOS/EOS added
        raise NotImplementedError


class ByteTokenizer(_Chat):
    """UTF-8 bytes as ids 0..255; special ids (BOS/EOS/PAD and unused ones) decode to nothing.
    Chat: `CHATML_TEMPLATE` with its markers spelled as bytes, BOS first, EOS ends a turn."""

    bos_token_id: int | None = TINY_BOS
    eos_token_id: int | None = TINY_EOS
    pad_token_id: int | None = TINY_PAD

    def __init__(self) -> None:
        self._specials = {"bos_token": "", "eos_token": ""}
        self._init_chat(CHATML_TEMPLATE, "built-in ChatML template")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [TINY_BOS] + ids if add_bos is None or add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def _encode_plain(self, text: str) -> list[int]:
        return self.encode(text, add_bos=True)  # the template cannot spell BOS in bytes


class _Library(_Chat):
    """A `tokenizers.Tokenizer` with BOS/EOS added by `encode` as the tokenizer's flags say."""

    _tok: Any
    add_bos: bool
    add_eos: bool

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]:
        """Ids of `text`; special tokens written in it match whole. add_bos/add_eos None follow
        the tokenizer's own setting (HF `tokenizer(text)`); False, False is HF
        `encode(text, add_special_tokens=False)`."""
        ids = self._encode_plain(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        if (self.add_eos if add_eos is None else add_eos) and self.eos_token_id is not None:
            ids = ids + [self.eos_token_id]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def _encode_plain(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _token(self, token_id: int | None) -> str | None:
        return None if token_id is None else self._tok.id_to_token(token_id)


class HFTokenizer(_Library):
    """A Hugging Face fast tokenizer read from a local `tokenizer.json`; BOS/EOS ids from the model
    config, BOS added by default; the chat template from `chat_template.jinja` or
    `tokenizer_config.json` beside it, when there is one."""

    add_bos, add_eos = True, False

    def __init__(self, path: Path, config: ModelConfig):
        from tokenizers import Tokenizer as _Tokenizer

        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a generic Exception for bad files
            raise CheckpointError(f"cannot read tokenizer {str(path)!r}: {exc}") from None
        self.bos_token_id, self.eos_token_id = config.bos_token_id, config.eos_token_id
        self._specials = {"bos_token": self._token(self.bos_token_id), "eos_token": self._token(self.eos_token_id)}
        template, where = _hf_chat_template(path.parent)
        self._init_chat(template, where)


def _hf_chat_template(directory: Path) -> tuple[str | None, str]:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), str(jinja)
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        return None, str(config_path)
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(config_path)!r}: {exc}") from None
    template = raw.get("chat_template") if isinstance(raw, dict) else None
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{str(config_path)!r}: chat_template must be a string")
    return template, f"{str(config_path)!r} chat_template"


class GGUFTokenizer(_Library):
    """The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata (gpt2 byte-level or
    llama SentencePiece BPE) and its `tokenizer.chat_template`; BOS/EOS and whether `encode`
    adds them (`add_bos_token`, `add_eos_token`) come from the file, not the model config."""

    def __init__(self, path: str | Path):
        from helix_jax.model.gguf_vocab import read_gguf_vocab

        vocab = read_gguf_vocab(path)
        self.vocab = vocab
        self._tok = vocab.tokenizer
        self.bos_token_id, self.eos_token_id = vocab.bos_token_id, vocab.eos_token_id
        self.pad_token_id, self.unk_token_id = vocab.pad_token_id, vocab.unk_token_id
        self.add_bos, self.add_eos = vocab.add_bos, vocab.add_eos
        self._specials = {
            "bos_token": vocab.token(vocab.bos_token_id),
            "eos_token": vocab.token(vocab.eos_token_id),
            "pad_token": vocab.token(vocab.pad_token_id),
            "unk_token": vocab.token(vocab.unk_token_id),
        }
        self._init_chat(vocab.chat_template, f"{str(path)!r} tokenizer.chat_template")


def load_tokenizer(config: ModelConfig, source: str | Path | None = None) -> Tokenizer:
    """The tokenizer of `source`: a `.gguf` file's own (a model name: its cached file's); `source/tokenizer.json` for a checkpoint
    directory (or the directory of a file in it); the byte tokenizer of the built-in tiny models
    when `source` is None. CheckpointError when none applies."""
    if source is None:
        if is_tiny(config):
            return ByteTokenizer()
        raise CheckpointError(f"model {config.name!r} needs a checkpoint directory with tokenizer.json or a .gguf file")
    from helix_jax.models import is_model_name, model_file

    path = model_file(source) if is_model_name(str(source)) else Path(source)
    if path.suffix.lower() == ".gguf":
        return GGUFTokenizer(path)
    path = path / "tokenizer.json" if path.is_dir() else path.parent / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"tokenizer file {str(path)!r} does not exist")
    return HFTokenizer(path, config)
