"""Tokenizers: the byte-level one of the built-in tiny models and Hugging Face `tokenizer.json`.

Owns: `ByteTokenizer` (ids 0..255 are bytes, then TINY_BOS/EOS/PAD; needs no files),
`HFTokenizer` (wraps the `tokenizers` library, local files only) and `load_tokenizer`.
Sits at the edges of the data flow: the coordinator encodes prompts and decodes outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from helix_jax.errors import CheckpointError
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


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; special ids (BOS/EOS/PAD and unused ones) decode to nothing."""

    bos_token_id, eos_token_id, pad_token_id = TINY_BOS, TINY_EOS, TINY_PAD

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [TINY_BOS] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face fast tokenizer read from a local `tokenizer.json`."""

    def __init__(self, path: Path, config: ModelConfig):
        from tokenizers import Tokenizer as _Tokenizer

        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a generic Exception for bad files
            raise CheckpointError(f"cannot read tokenizer {str(path)!r}: {exc}") from None
        self.bos_token_id, self.eos_token_id = config.bos_token_id, config.eos_token_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(config: ModelConfig, model_dir: str | Path | None = None) -> Tokenizer:
    """`model_dir/tokenizer.json` when a checkpoint directory is given, else the byte tokenizer of
    the built-in tiny models; CheckpointError when neither applies."""
    if model_dir is None:
        if is_tiny(config):
            return ByteTokenizer()
        raise CheckpointError(f"model {config.name!r} needs a checkpoint directory with tokenizer.json")
    path = Path(model_dir)
    path = path / "tokenizer.json" if path.is_dir() else path.parent / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"tokenizer file {str(path)!r} does not exist")
    return HFTokenizer(path, config)
