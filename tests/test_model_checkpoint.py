"""Our Flax layers == Hugging Face transformers on the same checkpoint; stage-only loading;
corrupt or mismatched checkpoints give one CheckpointError."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import import_when_used

from helix_jax.errors import CheckpointError
from helix_jax.model import SamplingParams, StageEngine, StepInput, forward_full, load_stage_weights
from helix_jax.model.checkpoint import checkpoint_config
from helix_jax.model.generate import generate_local
from helix_jax.model.step_program import NARROW_CPU_OPTIONS

torch = import_when_used("torch")
transformers = import_when_used("transformers")

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
IDS = np.array([[1, 5, 17, 33, 2, 90, 45, 3, 7, 60, 11, 12]])


def save_tiny_llama(directory: Path, rope_scaling=None, tie=False, shard=None) -> "transformers.PreTrainedModel":
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=128,
        initializer_range=0.2,
        rope_theta=5000.0,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return model


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama3")
    model = save_tiny_llama(directory, rope_scaling=LLAMA3_ROPE)
    return directory, model


@pytest.mark.parametrize("variant, layer_loop", [("llama3-rope-untied", "scan"), ("plain-rope-tied", "auto")])  # unroll: next test
def test_logits_and_greedy_match_transformers(tmp_path, llama3_dir, variant, layer_loop):
    if variant == "llama3-rope-untied":
        directory, hf = llama3_dir
    else:
        directory, hf = tmp_path, save_tiny_llama(tmp_path, tie=True)
    config = checkpoint_config(directory, dtype="float32")
    assert (config.rope_scaling is not None) == (variant == "llama3-rope-untied")
    weights = load_stage_weights(config, 0, 2, directory, layer_loop=layer_loop)
    ours = np.asarray(forward_full(weights.model(), jnp.asarray(IDS)))
    with torch.no_grad():
        ref = hf(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    generated = generate_local(
        config, weights, IDS[0].tolist(), 8, SamplingParams(), stop_at_eos=False, compiler_options=NARROW_CPU_OPTIONS
    )
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor(IDS), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert generated == hf_out[0, IDS.shape[1] :].tolist()


def test_staged_load_of_sharded_checkpoint_reads_only_its_layers(tmp_path):
    hf = save_tiny_llama(tmp_path, shard="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 3  # really sharded
    config = checkpoint_config(tmp_path, dtype="float32")
    # delete every shard holding only layer-0 tensors: stage [1, 2) must still load
    layer0_files = {f for name, f in index.items() if name.startswith("model.layers.0.")}
    other_files = {f for name, f in index.items() if not name.startswith("model.layers.0.")}
    for name in layer0_files - other_files:
        (tmp_path / name).unlink()
    second = load_stage_weights(config, 1, 2, tmp_path, layer_loop="unroll")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_stage_weights(config, 0, 2, tmp_path)
    # stage [1, 2) on HF's hidden states after layer 0 gives HF's logits
    with torch.no_grad():
        out = hf(torch.tensor(IDS), output_hidden_states=True)
    engine = StageEngine(config, 1, 2, second, max_slots=1, max_seq_len=16, prefill_buckets=(16,), return_logits=True)
    engine.add_request("r")
    (result,) = engine.step([StepInput("r", 1, 0, hidden=out.hidden_states[1][0].numpy())])
    np.testing.assert_allclose(result.logits, out.logits[0, -1].numpy(), atol=1e-4)


def _edit_json(path: Path, **changes) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_corrupt_or_mismatched_checkpoints_raise_checkpoint_error(tmp_path, llama3_dir):
    source, _ = llama3_dir
    config = checkpoint_config(source, dtype="float32")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_stage_weights(config, 0, 2, tmp_path / "nowhere")
    # missing tensor: re-save without one layer's q_proj
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(source / "model.safetensors"))
    broken = tmp_path / "missing"
    broken.mkdir()
    (broken / "config.json").write_text((source / "config.json").read_text())
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.q_proj.weight"}, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing the tensor 'model.layers.1.self_attn.q_proj.weight'"):
        load_stage_weights(config, 0, 2, broken)
    assert load_stage_weights(config, 0, 1, broken).end_layer == 1  # layer 0 alone is intact
    # wrong shape of one tensor
    shaped = tmp_path / "shape"
    shaped.mkdir()
    (shaped / "config.json").write_text((source / "config.json").read_text())
    save_file({**tensors, "model.layers.0.mlp.up_proj.weight": np.zeros((96, 64), np.float32)}, str(shaped / "model.safetensors"))
    with pytest.raises(CheckpointError, match="up_proj.weight' has shape \\(96, 64\\).*\\(128, 64\\)"):
        load_stage_weights(config, 0, 2, shaped)
    # config.json disagrees with the requested model
    with pytest.raises(CheckpointError, match="intermediate_size=128"):
        load_stage_weights(config.with_overrides(intermediate_size=256), 0, 2, source)
    # truncated file
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((source / "config.json").read_text())
    (truncated / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_stage_weights(config, 0, 2, truncated)
    # unsupported architecture
    _edit_json(truncated / "config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        checkpoint_config(truncated)
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        load_stage_weights(config, 0, 2, truncated)


def test_cli_generate_from_checkpoint_directory(llama3_dir):
    from typer.testing import CliRunner

    from helix_jax.cli.main import app

    directory, hf = llama3_dir
    prompt = [1, 5, 17, 33]
    result = CliRunner().invoke(
        app, ["generate", "--model", str(directory), "--prompt-ids", ",".join(map(str, prompt)), "--max-tokens", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)[
            0, len(prompt) :
        ].tolist()
    payload = json.loads(result.output)
    assert payload["ids"] == expected and payload["text"] is None  # no tokenizer.json there
    text = CliRunner().invoke(app, ["generate", "--model", str(directory), "--prompt", "hi"])
    assert isinstance(text.exception, CheckpointError) and "tokenizer.json" in str(text.exception)


def test_checkpoint_directory_wins_over_a_tiny_name(tmp_path, llama3_dir):
    import shutil

    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.modelconfig import is_tiny
    from helix_jax.models import default_weights_source

    directory = tmp_path / "tiny-llama"
    shutil.copytree(llama3_dir[0], directory)
    config = checkpoint_config(directory)
    assert is_tiny(config)  # named after its directory
    assert default_weights_source(config, str(directory)) == str(directory)
    assert default_weights_source(config, str(directory / "config.json")) == str(directory)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(config, directory)
