"""Model dimensions: the one description of a LLaMA-family model every layer shares.

Owns: `ModelConfig` (frozen), the built-in presets, and parsing of Hugging Face
`config.json` files. The planner's cost model reads sizes from here (bytes per layer,
KV bytes per token, activation bytes per token, FLOPs per token); the Flax runtime
builds its layers from the same object. Imports nothing heavier than the stdlib.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping

from helix_jax.errors import ConfigError
from helix_jax.jsonfile import read_json_file

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


def from_hf_config(source: str | Path | Mapping[str, Any], name: str | None = None) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face LLaMA `config.json` (path, directory or dict)."""
    if isinstance(source, Mapping):
        raw, label = dict(source), name or "hf-model"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "config.json"
        raw = read_json_file(path, "model config", ConfigError)
        if not isinstance(raw, dict):
            raise ConfigError(f"model config {str(path)!r} must be a JSON object, got {type(raw).__name__}")
        label = name or path.parent.name or "hf-model"
    model_type = raw.get("model_type", "llama")
    archs = raw.get("architectures") or ["LlamaForCausalLM"]
    if model_type not in ("llama", "mistral") or not any("Llama" in a or "Mistral" in a for a in archs):
        raise ConfigError(
            f"unsupported architecture {archs!r} (model_type {model_type!r}); only LLaMA-family decoders (LlamaForCausalLM) are supported"
        )
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        scaling = None
        # transformers >= 5 writes rope_theta and the scaling into "rope_parameters"
        rope_params = raw.get("rope_parameters") or {}
        rs = raw.get("rope_scaling") or (rope_params if rope_params.get("rope_type", "default") != "default" else None)
        if rs:
            kind = rs.get("rope_type", rs.get("type"))
            if kind != "llama3":
                raise ConfigError(f"unsupported rope_scaling type {kind!r}; only 'llama3' is supported")
            scaling = RopeScaling(
                factor=float(rs["factor"]),
                low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
                high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
                original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 8192)),
            )
        dtype = DTYPE_ALIASES.get(str(raw.get("torch_dtype", raw.get("dtype", "bfloat16"))), "bfloat16")
        eos = raw.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return ModelConfig(
            name=label,
            num_layers=int(raw["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            intermediate_size=int(raw["intermediate_size"]),
            vocab_size=int(raw["vocab_size"]),
            dtype=dtype,
            head_dim=int(raw["head_dim"]) if raw.get("head_dim") else None,
            rope_theta=float(raw.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
            rope_scaling=scaling,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            bos_token_id=raw.get("bos_token_id", 1),
            eos_token_id=eos,
        )
    except KeyError as exc:
        raise ConfigError(f"model config is missing the field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model config has a malformed value: {exc}") from None


_EXPLICIT_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
_EXPLICIT_ALIASES = {
    "layers": "num_layers",
    "hidden": "hidden_size",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
}


def resolve_model(spec: str | Mapping[str, Any], base_dir: Path | None = None) -> ModelConfig:
    """Turn the `model` field of a topology (or a CLI `--model`) into a ModelConfig.

    Accepts a preset name (the named real models of helix_jax/models.py are presets too), a
    .gguf file, a path to a HF `config.json` or checkpoint directory, or a dict of
    explicit dimensions (optionally `{"preset": name, ...overrides}` or `{"hf_config": path}`).
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        path = Path(spec).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if path.suffix == ".gguf":
            from helix_jax.errors import CheckpointError
            from helix_jax.model.gguf_file import gguf_config

            try:
                return gguf_config(path)
            except CheckpointError as exc:
                raise ConfigError(str(exc)) from None
        if path.exists():
            return from_hf_config(path)
        raise ConfigError(
            f"model {spec!r} is neither a known preset ({', '.join(sorted(PRESETS))}), a .gguf file "
            "nor an existing config.json or checkpoint directory"
        )
    if not isinstance(spec, Mapping):
        raise ConfigError(f"model must be a preset name, a path or an object, got {spec!r}")
    fields = dict(spec)
    if "hf_config" in fields:
        return resolve_model(str(fields["hf_config"]), base_dir)
    base = preset(str(fields.pop("preset"))) if "preset" in fields else None
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        key = _EXPLICIT_ALIASES.get(key, key)
        if key not in _EXPLICIT_FIELDS:
            raise ConfigError(f"model has an unknown field {key!r}")
        if key == "dtype":
            value = DTYPE_ALIASES.get(str(value).lower(), str(value))
        if key == "rope_scaling" and isinstance(value, Mapping):
            value = RopeScaling(**value)
        clean[key] = value
    if base is not None:
        return dataclasses.replace(base, **clean)
    clean.setdefault("name", "custom")
    missing = [f for f in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size") if f not in clean]
    if missing:
        raise ConfigError(f"explicit model is missing the field(s) {', '.join(missing)}")
    clean.setdefault("num_kv_heads", clean["num_heads"])
    return ModelConfig(**clean)
