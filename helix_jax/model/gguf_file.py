"""GGUF checkpoints (llama.cpp's format): validation, ModelConfig from metadata, per-tensor reads.

Owns: `GGUFFile` (a memory-mapped `gguf.GGUFReader`, gguf_reader.py, checked on open: magic, version,
architecture, tensor types, tensor extents against the file size), `gguf_config` (the
`llama.*` metadata as a ModelConfig) and `GGUFFile.read` (one tensor, dequantized to float32
in Hugging Face layout). Every problem with a file is one CheckpointError naming the file and
the key or tensor.
Sits in the runtime step of the data flow: `checkpoint.fill_stage_state` asks it for the
tensors of one stage's layers only; nothing else of the file is dequantized (the mapping keeps
untouched pages on disk). Imports numpy and gguf only.

Layout facts (GGUF as llama.cpp's converter writes it): tensor names `blk.N.attn_q.weight`
etc.; matrices are stored `[out, in]` like HF; the converter permutes the rows of the Q and K
projections per head from HF's rotate-half rotary layout to interleaved pairs, so reading
undoes that permutation (`_unpermute`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from helix_jax.errors import CheckpointError, ConfigError
from helix_jax.model.gguf_reader import open_reader
from helix_jax.modelconfig import ModelConfig

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama",)
# Types read without the quants module (plain floats) and the quantized types we accept.
_FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}
QUANT_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_TYPES = (*_FLOAT_TYPES, "BF16", *QUANT_TYPES)

# HF module name of a layer tensor -> GGUF suffix; the rest are whole-model tensors.
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_MODEL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of a Hugging Face LLaMA tensor name."""
    if hf_name in _MODEL_NAMES:
        return _MODEL_NAMES[hf_name]
    match = _HF_LAYER.fullmatch(hf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise CheckpointError(f"internal: no GGUF name for tensor {hf_name!r}")
    return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo the converter's per-head row order (pairs interleaved) back to rotate-half halves."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class GGUFFile:
    """One open .gguf file; `read(hf_name)` dequantizes a single tensor (recorded in `reads`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"GGUF file {str(self.path)!r} does not exist")
        try:
            self._reader = open_reader(self.path)
        except Exception as exc:  # ValueError for a bad magic/version, others for a cut-off file
            text = str(exc).lower()
            reason = (
                "not a GGUF file (bad magic)"
                if "magic" in text
                else f"the file is truncated ({exc})"
                if "reshape" in text or isinstance(exc, (IndexError, EOFError))
                else exc
            )
            raise CheckpointError(f"cannot read GGUF file {str(self.path)!r}: {reason}") from None
        self.tensors = {t.name: t for t in self._reader.tensors}
        size = os.path.getsize(self.path)
        for t in self._reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise CheckpointError(
                    f"GGUF file {str(self.path)!r} is truncated: tensor {t.name!r} ends at byte {end}, the file has {size}"
                )
            if t.tensor_type.name not in SUPPORTED_TYPES:
                raise CheckpointError(
                    f"GGUF file {str(self.path)!r}: tensor {t.name!r} has type "
                    f"{t.tensor_type.name}, which is not supported (supported: "
                    f"{', '.join(SUPPORTED_TYPES)})"
                )
        arch = self.field("general.architecture", None)
        if arch not in ARCHITECTURES:
            raise CheckpointError(
                f"GGUF file {str(self.path)!r} has architecture {arch!r}; only "
                f"LLaMA-family models ({', '.join(ARCHITECTURES)}) are supported"
            )
        self.reads: list[str] = []  # GGUF names dequantized so far, in order

    def field(self, key: str, default: Any = ...) -> Any:
        """A metadata value; CheckpointError naming the key when it is absent and no default."""
        entry = self._reader.fields.get(key)
        if entry is None:
            if default is ...:
                raise CheckpointError(f"GGUF file {str(self.path)!r} lacks the metadata key {key!r}")
            return default
        try:
            return entry.contents()
        except Exception as exc:
            raise CheckpointError(f"GGUF file {str(self.path)!r}: metadata {key!r} is malformed: {exc}") from None

    def read(self, hf_name: str, heads: int | None = None) -> np.ndarray:
        """The tensor Hugging Face calls `hf_name`, float32 `[out, in]`; `heads` undoes the Q/K
        row permutation (num_heads for q_proj, num_kv_heads for k_proj)."""
        name = gguf_name(hf_name)
        tensor = self.tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"GGUF file {str(self.path)!r} is missing the tensor {name!r}")
        kind = tensor.tensor_type.name
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims innermost first
        raw = np.asarray(tensor.data)
        if kind in _FLOAT_TYPES:
            array = raw.view(_FLOAT_TYPES[kind]).reshape(shape).astype(np.float32)
        elif kind == "BF16":
            array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            from gguf import quants

            array = quants.dequantize(raw, tensor.tensor_type).reshape(shape).astype(np.float32, copy=False)
        self.reads.append(name)
        return _unpermute(array, heads) if heads else array

    def has(self, hf_name: str) -> bool:
        return gguf_name(hf_name) in self.tensors


def gguf_config(source: str | Path | GGUFFile, name: str | None = None, dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a GGUF file's `llama.*` metadata (stage dtype `dtype`)."""
    gguf = source if isinstance(source, GGUFFile) else GGUFFile(source)
    arch = gguf.field("general.architecture")
    key = lambda suffix: f"{arch}.{suffix}"  # noqa: E731 - local shorthand
    scaling = gguf.field(key("rope.scaling.type"), "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in gguf.tensors:
        raise CheckpointError(
            f"GGUF file {str(gguf.path)!r}: rope scaling {scaling if scaling != 'none' else 'rope_freqs.weight'!r} is not supported"
        )
    heads = int(gguf.field(key("attention.head_count")))
    hidden = int(gguf.field(key("embedding_length")))
    tokens = gguf.field("tokenizer.ggml.tokens", None)
    vocab = gguf.field(key("vocab_size"), None) or (len(tokens) if tokens is not None else None)
    if vocab is None:
        vocab = int(gguf.tensors["token_embd.weight"].shape[1]) if "token_embd.weight" in gguf.tensors else None
    head_dim = int(gguf.field(key("rope.dimension_count"), hidden // heads))
    try:
        return ModelConfig(
            name=name or gguf.path.name.split(".")[0],
            num_layers=int(gguf.field(key("block_count"))),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(gguf.field(key("attention.head_count_kv"), heads)),
            intermediate_size=int(gguf.field(key("feed_forward_length"))),
            vocab_size=int(vocab) if vocab is not None else 0,
            dtype=dtype,
            head_dim=None if head_dim == hidden // heads else head_dim,
            rope_theta=_f32(gguf.field(key("rope.freq_base"), 10000.0)),
            rms_norm_eps=_f32(gguf.field(key("attention.layer_norm_rms_epsilon"), 1e-5)),
            tie_word_embeddings="output.weight" not in gguf.tensors,
            max_position_embeddings=int(gguf.field(key("context_length"), 4096)),
            bos_token_id=_optional_int(gguf.field("tokenizer.ggml.bos_token_id", None)),
            eos_token_id=_optional_int(gguf.field("tokenizer.ggml.eos_token_id", None)),
        )
    except ConfigError as exc:
        raise CheckpointError(f"GGUF file {str(gguf.path)!r}: {exc}") from None


def _f32(value: Any) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
