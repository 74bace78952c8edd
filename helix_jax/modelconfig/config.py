"""Model dimensions: `ModelConfig`, the one description of a LLaMA-family model every layer
shares, and its dtypes. The planner's cost model reads sizes from here (bytes per layer, KV bytes
per token, activation bytes per token, FLOPs per token); the Flax runtime builds its layers from
the same object. Imports nothing heavier than the stdlib.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from helix_jax.errors import ConfigError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "float16": "float16",
    "half": "float16",
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3 style frequency-dependent rotary scaling (`rope_type: llama3`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions of a LLaMA-family decoder. Hashable: safe as a jit static argument."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    dtype: str = "bfloat16"
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def __post_init__(self) -> None:
        for field in (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{field} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads}) unless head_dim is given"
            )
        if self.dtype not in DTYPE_BYTES:
            raise ConfigError(f"model.dtype {self.dtype!r} is not one of {sorted(DTYPE_BYTES)}")

    # ---- derived sizes (bytes, FLOPs) used by the cost model and the runtime ----
    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @functools.cached_property  # read on every simulated step (cost model); the config is frozen
    def params_per_layer(self) -> int:
        h, d = self.hidden_size, self.dim_per_head
        attn = h * self.num_heads * d + 2 * h * self.num_kv_heads * d + self.num_heads * d * h
        mlp = 3 * h * self.intermediate_size
        return attn + mlp + 2 * h  # + two RMSNorm weights

    @property
    def weight_bytes_per_layer(self) -> int:
        return self.params_per_layer * self.bytes_per_param

    @property
    def embedding_bytes(self) -> int:
        """Token embedding plus (untied) LM head and final norm."""
        tables = 1 if self.tie_word_embeddings else 2
        return (tables * self.vocab_size * self.hidden_size + self.hidden_size) * self.bytes_per_param

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return 2 * self.num_kv_heads * self.dim_per_head * self.bytes_per_param

    @property
    def activation_bytes_per_token(self) -> int:
        """Bytes of one token's hidden state sent between pipeline stages."""
        return self.hidden_size * self.bytes_per_param

    @property
    def flops_per_token_per_layer(self) -> int:
        """Matmul FLOPs of one token through one layer, attention scores excluded."""
        return 2 * (self.params_per_layer - 2 * self.hidden_size)

    def attention_flops_per_token_per_layer(self, context_tokens: int) -> int:
        """FLOPs of QK^T and PV for one query token against `context_tokens` keys."""
        return 4 * self.num_heads * self.dim_per_head * context_tokens

    @property
    def num_params(self) -> int:
        return self.num_layers * self.params_per_layer + self.embedding_bytes // self.bytes_per_param

    def with_overrides(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
