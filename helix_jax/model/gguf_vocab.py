"""GGUF vocabularies: a `tokenizers.Tokenizer` rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.

Owns: `read_gguf_vocab` (reads the metadata with `gguf.GGUFReader`, memory-mapped, via gguf_reader.py) and
`build_vocab` (turns that metadata into a `GGUFVocab`: the `tokenizers` pipeline plus the
special ids, add_bos/add_eos flags and the chat template). Two tokenizer models are understood:
"gpt2" (byte-level BPE from tokens + merges; the split regex is chosen by `tokenizer.ggml.pre`)
and "llama" (SentencePiece-style BPE from tokens + scores, with `<0xNN>` byte fallback and the
"▁" space marker). Token types 3 (control) become special added tokens (matched whole, skipped
on decode), 4 (user-defined) non-special added tokens (matched whole, kept on decode).
Sits at the edge of the data flow, under `GGUFTokenizer` (helix_jax/model/tokenizer.py).
Imports gguf and tokenizers only when called; never jax or flax.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

from helix_jax.errors import CheckpointError

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPIECE_SPACE = "\u2581"  # "▁", SentencePiece's visible space

# GPT-2's split, the byte-level pre-tokenizer's built-in regex (ByteLevel(use_regex=True)).
_GPT2 = None
# LLaMA-3's split: case-insensitive contractions, at most 3 digits a piece, newlines apart.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen-2's: as LLaMA-3's but every digit on its own.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS = "digits"  # every digit its own piece, then GPT-2's split (StarCoder, SmolLM, ...)

# `tokenizer.ggml.pre` -> split, as llama.cpp groups its pre-tokenizer types.
PRE_TOKENIZERS: dict[str, str | None] = {
    **{name: _GPT2 for name in ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion")},
    **{name: _DIGITS for name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")},
    **{name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "smaug-bpe", "dbrx")},
    **{name: _QWEN2_SPLIT for name in ("qwen2", "deepseek-r1-qwen")},
}

_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
)


@dataclasses.dataclass(frozen=True)
class GGUFVocab:
    """A GGUF file's tokenizer: the `tokenizers` pipeline (no post-processor: BOS/EOS are the
    caller's, per add_bos/add_eos) and what the metadata says around it."""

    tokenizer: Any  # tokenizers.Tokenizer
    model: str  # "gpt2" or "llama"
    tokens: tuple[str, ...]
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    unk_token_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None

    def token(self, token_id: int | None) -> str | None:
        """The spelling of `token_id` in the file (None for None)."""
        return None if token_id is None else self.tokens[token_id]


def read_gguf_vocab(path: str | Path) -> GGUFVocab:
    """The tokenizer of the GGUF file at `path`; CheckpointError names a missing file, a file
    that is not GGUF, or the bad metadata key."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist")
    try:
        from helix_jax.model.gguf_reader import open_reader

        reader = open_reader(path)
    except ImportError:
        raise CheckpointError("reading a .gguf tokenizer needs the gguf package (pip install gguf)") from None
    except Exception as exc:  # gguf raises ValueError/struct errors of many kinds for bad files
        raise CheckpointError(f"cannot read GGUF file {str(path)!r}: {exc}") from None
    metadata: dict[str, Any] = {}
    for key in _KEYS:
        field = reader.fields.get(key)
        if field is not None:
            try:
                metadata[key] = field.contents()
            except Exception as exc:
                raise CheckpointError(f"GGUF file {str(path)!r}: cannot read {key}: {exc}") from None
    return build_vocab(metadata, str(path))


def build_vocab(metadata: Mapping[str, Any], where: str = "GGUF metadata") -> GGUFVocab:
    """A `GGUFVocab` from `tokenizer.*` metadata values (as `GGUFReader` field contents)."""
    model = _get(metadata, "tokenizer.ggml.model", str, where)
    if model not in ("gpt2", "llama"):
        raise CheckpointError(
            f"{where}: tokenizer.ggml.model {model!r} is not supported (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)"
        )
    tokens = _string_list(metadata, "tokenizer.ggml.tokens", where)
    n = len(tokens)
    types = _int_list(metadata, "tokenizer.ggml.token_type", where, n, default=NORMAL)
    ids = {key: _token_id(metadata, f"tokenizer.ggml.{key}_token_id", where, n) for key in ("bos", "eos", "padding", "unknown")}
    add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token", where, default=model == "llama")
    add_eos = _flag(metadata, "tokenizer.ggml.add_eos_token", where, default=False)
    add_space_prefix = _flag(metadata, "tokenizer.ggml.add_space_prefix", where, default=model == "llama")
    template = metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{where}: tokenizer.chat_template must be a string")
    if model == "gpt2":
        pre = metadata.get("tokenizer.ggml.pre", "default")
        tokenizer = _byte_level(
            tokens, _string_list(metadata, "tokenizer.ggml.merges", where), _pre_tokenizer_split(pre, where), add_space_prefix, where
        )
    else:
        tokenizer = _sentencepiece(tokens, types, metadata, ids["unknown"], add_space_prefix, where)
    specials = {i for i, t in enumerate(types) if t in (CONTROL, UNKNOWN)}
    specials |= {i for i in ids.values() if i is not None}
    _add_tokens(tokenizer, tokens, specials, [i for i, t in enumerate(types) if t == USER_DEFINED])
    return GGUFVocab(tokenizer, model, tuple(tokens), ids["bos"], ids["eos"], ids["padding"], ids["unknown"], add_bos, add_eos, template)


def _pre_tokenizer_split(pre: Any, where: str) -> str | None:
    if not isinstance(pre, str):
        raise CheckpointError(f"{where}: tokenizer.ggml.pre must be a string, got {pre!r}")
    if pre not in PRE_TOKENIZERS:
        log.warning("%s: unknown tokenizer.ggml.pre %r; splitting text as GPT-2 does", where, pre)
        return _GPT2
    return PRE_TOKENIZERS[pre]


def _byte_level(tokens: list[str], merges: list[str], split: str | None, add_prefix_space: bool, where: str) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        bpe = models.BPE(vocab, _merge_pairs(merges, where), fuse_unk=False, byte_fallback=False)
    except Exception as exc:  # a merge naming a token outside the vocabulary
        raise CheckpointError(f"{where}: tokenizer.ggml.merges does not fit tokenizer.ggml.tokens: {exc}") from None
    tokenizer = Tokenizer(bpe)
    if split is _GPT2:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    elif split == _DIGITS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece(
    tokens: list[str], types: list[int], metadata: Mapping[str, Any], unk_id: int | None, add_space_prefix: bool, where: str
) -> Any:
    """SentencePiece BPE: merge the adjacent pair whose union is the highest-scored token. As
    `tokenizers` BPE, that is one merge per way of cutting a token into two vocabulary tokens,
    ranked by the token's score (ties: lower id first)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = _float_list(metadata, "tokenizer.ggml.scores", where, len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in metadata:
        pairs = _merge_pairs(_string_list(metadata, "tokenizer.ggml.merges", where), where)
    else:
        mergeable = {t for t, kind in zip(tokens, types) if kind in (NORMAL, USER_DEFINED, UNUSED)}
        ranked = []
        for i, (token, kind) in enumerate(zip(tokens, types)):
            if kind != NORMAL or len(token) < 2:
                continue
            for cut in range(1, len(token)):
                left, right = token[:cut], token[cut:]
                if left in mergeable and right in mergeable:
                    ranked.append((-scores[i], i, vocab[left], left, right))
        ranked.sort()
        pairs = [(left, right) for *_, left, right in ranked]
    byte_fallback = BYTE in types or "<0x00>" in vocab  # <0xNN> pieces spell unknown bytes
    unk = tokens[unk_id] if unk_id is not None else None
    try:
        bpe = models.BPE(vocab, pairs, unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback)
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot build the SentencePiece vocabulary: {exc}") from None
    tokenizer = Tokenizer(bpe)
    steps = [normalizers.Prepend(SPIECE_SPACE)] if add_space_prefix else []
    tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPIECE_SPACE)])
    decoding = [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decoding.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decoding)
    return tokenizer


def _merge_pairs(merges: list[str], where: str) -> list[tuple[str, str]]:
    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep or not left or not right:
            raise CheckpointError(f"{where}: tokenizer.ggml.merges entry {m!r} is not 'left right'")
        pairs.append((left, right))
    return pairs


def _add_tokens(tokenizer: Any, tokens: list[str], specials: set[int], user_defined: list[int]) -> None:
    """Specials (control, unknown and the named special ids) and user-defined tokens are matched
    whole in the raw text, before normalization; only specials are skipped on decode."""
    from tokenizers import AddedToken

    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in sorted(specials) if tokens[i]])
    tokenizer.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user_defined if tokens[i] and i not in specials])


def _get(metadata: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in metadata:
        raise CheckpointError(f"{where}: metadata key {key} is missing")
    value = metadata[key]
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: {key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _string_list(metadata: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = _get(metadata, key, list, where)
    if not value or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"{where}: {key} must be a non-empty list of strings")
    return value


def _int_list(metadata: Mapping[str, Any], key: str, where: str, n: int, default: int) -> list[int]:
    if key not in metadata:
        return [default] * n
    value = _get(metadata, key, list, where)
    if len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CheckpointError(f"{where}: {key} must hold one integer per token ({n})")
    return value


def _float_list(metadata: Mapping[str, Any], key: str, where: str, n: int) -> list[float]:
    value = _get(metadata, key, list, where)
    if len(value) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise CheckpointError(f"{where}: {key} must hold one score per token ({n})")
    return [float(v) for v in value]


def _token_id(metadata: Mapping[str, Any], key: str, where: str, n: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise CheckpointError(f"{where}: {key} {value!r} is not a token id in [0, {n})")
    return value


def _flag(metadata: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"{where}: {key} must be a boolean, got {value!r}")
    return value
