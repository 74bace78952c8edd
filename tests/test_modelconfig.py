"""ModelConfig presets, derived sizes and HF config parsing."""

import json

import pytest

from helix_jax.errors import ConfigError
from helix_jax.modelconfig import PRESETS, from_hf_config, preset, resolve_model


def test_llama2_70b_sizes_match_public_figures() -> None:
    cfg = preset("llama-2-70b")
    # ~69B parameters in total; ~0.86B per decoder layer; GQA with 8 KV heads.
    assert 68e9 < cfg.num_params < 70e9
    assert cfg.weight_bytes_per_layer == cfg.params_per_layer * 2
    assert cfg.kv_bytes_per_token_per_layer == 2 * 8 * 128 * 2
    assert cfg.activation_bytes_per_token == 8192 * 2


def test_every_preset_is_consistent() -> None:
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        assert cfg.num_heads % cfg.num_kv_heads == 0
        assert cfg.dim_per_head * cfg.num_heads == cfg.hidden_size


def test_llama2_7b_layer_parameters_by_hand() -> None:
    cfg = preset("llama-2-7b")
    # q, k, v, o projections (4 x 4096^2), gate/up/down (3 x 4096 x 11008), two RMSNorm weights
    assert cfg.params_per_layer == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    assert cfg.flops_per_token_per_layer == 2 * (4 * 4096**2 + 3 * 4096 * 11008)


def test_hf_config_roundtrip(tmp_path) -> None:
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 3,
        "intermediate_size": 128,
        "vocab_size": 100,
        "torch_dtype": "float32",
        "rope_theta": 500000.0,
        "eos_token_id": [7, 8],
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = from_hf_config(tmp_path)
    assert (cfg.num_layers, cfg.num_kv_heads, cfg.dtype, cfg.eos_token_id) == (3, 2, "float32", 7)
    assert cfg.rope_scaling is not None and cfg.rope_scaling.original_max_position_embeddings == 64
    assert resolve_model(str(tmp_path)) == cfg


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gpt-9", "neither a known preset"),
        ({"num_layers": 2}, "missing the field"),
        ({"preset": "tiny", "num_kv_heads": 3}, "multiple of"),
        ({"preset": "tiny", "wings": 2}, "unknown field 'wings'"),
        ({"preset": "tiny", "num_layers": 0}, "num_layers must be a positive integer"),
    ],
)
def test_bad_model_specs_name_the_problem(spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_model(spec)


def test_unsupported_architecture(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="unsupported architecture"):
        from_hf_config(tmp_path / "config.json")


def test_unreadable_or_malformed_config_files(tmp_path) -> None:
    (tmp_path / "config.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError, match="cannot be read"):
        from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        from_hf_config(tmp_path)
