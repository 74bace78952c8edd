"""The built-in models by name: LLaMA-family presets with real dimensions (the planner prices
them; weights come from checkpoints) and the tiny byte-level models with seeded random weights.
"""

from __future__ import annotations

from helix_jax.errors import ConfigError
from helix_jax.modelconfig.config import ModelConfig, RopeScaling

# Byte-level vocabulary of the built-in tiny models: ids 0..255 are bytes, then specials.
TINY_BOS, TINY_EOS, TINY_PAD = 256, 257, 258
TINY_VOCAB = 320  # 259 used, padded for alignment

PRESETS: dict[str, ModelConfig] = {
    "llama-2-70b": ModelConfig("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, "bfloat16"),
    "llama-2-13b": ModelConfig("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, "bfloat16"),
    "llama-2-7b": ModelConfig("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, "bfloat16"),
    "llama-30b": ModelConfig("llama-30b", 60, 6656, 52, 52, 17920, 32000, "float16", max_position_embeddings=2048, rms_norm_eps=1e-6),
    "llama-3-8b": ModelConfig(
        "llama-3-8b",
        32,
        4096,
        32,
        8,
        14336,
        128256,
        "bfloat16",
        rope_theta=500000.0,
        max_position_embeddings=8192,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "llama-3.1-8b": ModelConfig(
        "llama-3.1-8b",
        32,
        4096,
        32,
        8,
        14336,
        128256,
        "bfloat16",
        rope_theta=500000.0,
        rope_scaling=RopeScaling(),
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    # SmolLM2-135M-Instruct: the default real model (GGUF from the model cache; helix_jax/models.py).
    # Its dimensions are known here so that planning needs no file; loading checks them.
    "smollm2-135m": ModelConfig(
        "smollm2-135m",
        30,
        576,
        9,
        3,
        1536,
        49152,
        "float32",
        rope_theta=100000.0,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Built-in tiny models: seeded random weights, byte-level tokenizer, no files needed.
    "tiny": ModelConfig(
        "tiny", 4, 64, 4, 2, 128, TINY_VOCAB, "float32", max_position_embeddings=1024, bos_token_id=TINY_BOS, eos_token_id=TINY_EOS
    ),
    "tiny-8": ModelConfig(
        "tiny-8", 8, 64, 4, 2, 128, TINY_VOCAB, "float32", max_position_embeddings=1024, bos_token_id=TINY_BOS, eos_token_id=TINY_EOS
    ),
    # 80 narrow layers: a LLaMA-2-70B-shaped pipeline that fits on a laptop (--emulate).
    "tiny-80": ModelConfig(
        "tiny-80", 80, 32, 2, 1, 64, TINY_VOCAB, "float32", max_position_embeddings=1024, bos_token_id=TINY_BOS, eos_token_id=TINY_EOS
    ),
}


def is_tiny(config: ModelConfig) -> bool:
    """True for the built-in byte-level models (random weights, no checkpoint)."""
    return config.name.startswith("tiny")


def preset(name: str) -> ModelConfig:
    key = name.strip().lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]
