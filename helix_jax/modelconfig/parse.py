"""Model configs from files: a Hugging Face LLaMA `config.json`, or the `model` field of a
topology (a preset name, a checkpoint directory, a GGUF file or explicit dimensions).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from helix_jax.errors import ConfigError
from helix_jax.jsonfile import read_json_file
from helix_jax.modelconfig.config import DTYPE_ALIASES, ModelConfig, RopeScaling
from helix_jax.modelconfig.presets import PRESETS, preset


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
