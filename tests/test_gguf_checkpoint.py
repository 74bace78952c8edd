"""GGUF files written here with `gguf.GGUFWriter`: a tiny LLaMA round trip (our seeded weights
written in llama.cpp's layout, Q/K rows permuted as its converter does, read back to the same
logits), every supported tensor type, and one CheckpointError per kind of broken file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

from helix_jax.errors import CheckpointError  # noqa: E402
from helix_jax.model.gguf_file import GGUFFile, gguf_config, gguf_name  # noqa: E402
from helix_jax.modelconfig import PRESETS  # noqa: E402

CFG = PRESETS["tiny"].with_overrides(name="tiny-gguf")


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rotate-half row halves interleaved as pairs."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _hf_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Our seeded tiny model as Hugging Face names and `[out, in]` arrays."""
    from flax import nnx

    from helix_jax.model.layers import fused_parts
    from helix_jax.model.weights import random_stage_weights

    out = {}
    state = random_stage_weights(CFG, 0, CFG.num_layers, seed, layer_loop="unroll").state
    fused = fused_parts(CFG)  # q/k/v and gate/up kernels side by side: one tensor each in the file
    for key, var in nnx.to_flat_state(state):
        path, value = tuple(str(p) for p in key), np.asarray(var.get_value())
        module = ".".join(path[2:-1])
        if path[0] == "layers" and module in fused:
            bounds = np.cumsum([n for _, n in fused[module]])[:-1]
            for (part, _), kernel in zip(fused[module], np.split(value, bounds, axis=1)):
                out[f"model.layers.{path[1]}.{part}.weight"] = kernel.T
            continue
        if path[0] == "layers":
            name = f"model.layers.{path[1]}.{module}.weight"
        else:
            name = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}[path[0]]
        out[name] = value.T if path[-1] == "kernel" else value
    return out


def write_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "llama", types: dict[str, Q] | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(CFG.num_layers)
    writer.add_embedding_length(CFG.hidden_size)
    writer.add_feed_forward_length(CFG.intermediate_size)
    writer.add_head_count(CFG.num_heads)
    writer.add_head_count_kv(CFG.num_kv_heads)
    writer.add_rope_freq_base(CFG.rope_theta)
    writer.add_layer_norm_rms_eps(CFG.rms_norm_eps)
    writer.add_context_length(CFG.max_position_embeddings)
    writer.add_vocab_size(CFG.vocab_size)
    writer.add_bos_token_id(CFG.bos_token_id)
    writer.add_eos_token_id(CFG.eos_token_id)
    for name, array in tensors.items():
        kind = (types or {}).get(name, Q.F32)
        if kind == Q.F32:
            writer.add_tensor(name, array.astype(np.float32))
        else:
            writer.add_tensor(name, quants.quantize(array.astype(np.float32), kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_tensors(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, array in hf.items():
        if ".q_proj." in name:
            array = _permute(array, CFG.num_heads)
        elif ".k_proj." in name:
            array = _permute(array, CFG.num_kv_heads)
        out[gguf_name(name)] = array
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", gguf_tensors(_hf_tensors()))


def test_a_tiny_llama_round_trips_to_the_same_logits(tiny_gguf: Path) -> None:
    import jax.numpy as jnp

    from helix_jax.model.stage import forward_full
    from helix_jax.model.weights import load_stage_weights, random_stage_weights

    config = gguf_config(tiny_gguf, name="tiny-gguf")
    assert config == CFG.with_overrides(dtype="float32")
    ids = jnp.asarray([[256, 72, 101, 108, 108, 111, 33]], jnp.int32)
    want = np.asarray(forward_full(random_stage_weights(CFG, 0, 4, 0, "scan").model(), ids))
    for loop in ("scan", "unroll"):
        got = np.asarray(forward_full(load_stage_weights(CFG, 0, 4, str(tiny_gguf), loop).model(), ids))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_each_quantized_type_reads_as_gguf_dequantizes_it(tmp_path: Path, kind: Q) -> None:
    hf = _hf_tensors()
    name = "model.layers.0.mlp.up_proj.weight"  # [128, 64]: whole blocks of 32
    path = write_gguf(tmp_path / "q.gguf", gguf_tensors(hf), types={gguf_name(name): kind})
    got = GGUFFile(path).read(name)
    want = quants.dequantize(quants.quantize(hf[name], kind), kind)
    assert got.dtype == np.float32 and got.shape == hf[name].shape
    np.testing.assert_array_equal(got, want)
    assert np.abs(got - hf[name]).max() < 0.2 * np.abs(hf[name]).max()  # a faithful quantization


@pytest.mark.parametrize("kind", [Q.Q4_K, Q.Q6_K])
def test_k_quants_read_as_gguf_dequantizes_them(tmp_path: Path, kind: Q) -> None:
    """gguf cannot quantize K types: write valid blocks of random quants with small scales."""
    block, size = gguf.GGML_QUANT_SIZES[kind]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(4, size), dtype=np.uint8)  # one [4, 256] tensor: 4 blocks
    scale = np.array([0.01], np.float16).view(np.uint8)
    offsets = [(0, 2), (2, 4)] if kind == Q.Q4_K else [(size - 2, size)]  # d (and dmin) fp16 fields
    for lo, hi in offsets:
        raw[:, lo:hi] = scale
    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=kind)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    got = GGUFFile(path).read("model.layers.0.mlp.up_proj.weight")
    assert got.shape == (4, block) and np.isfinite(got).all()
    np.testing.assert_array_equal(got, quants.dequantize(raw, kind))


def test_broken_files_each_give_one_clear_error(tmp_path: Path, tiny_gguf: Path) -> None:
    from helix_jax.model.weights import load_stage_weights

    data = tiny_gguf.read_bytes()
    (tmp_path / "magic.gguf").write_bytes(b"GGMX" + data[4:])
    with pytest.raises(CheckpointError, match="bad magic"):
        GGUFFile(tmp_path / "magic.gguf")
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="is truncated"):
        GGUFFile(tmp_path / "cut.gguf")
    with pytest.raises(CheckpointError, match="does not exist"):
        GGUFFile(tmp_path / "absent.gguf")

    tensors = gguf_tensors(_hf_tensors())
    gpt2 = write_gguf(tmp_path / "gpt2.gguf", tensors, arch="gpt2")
    with pytest.raises(CheckpointError, match="architecture 'gpt2'; only LLaMA-family"):
        GGUFFile(gpt2)
    missing = write_gguf(tmp_path / "missing.gguf", {k: v for k, v in tensors.items() if k != "blk.2.attn_q.weight"})
    with pytest.raises(CheckpointError, match="missing the tensor 'blk.2.attn_q.weight'"):
        load_stage_weights(CFG, 0, 4, str(missing))
    load_stage_weights(CFG, 0, 2, str(missing))  # a stage that does not hold layer 2 never asks for it

    writer = gguf.GGUFWriter(str(tmp_path / "int.gguf"), "llama")
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 8), np.int32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="has type I32, which is not supported"):
        GGUFFile(tmp_path / "int.gguf")
    wrong = write_gguf(tmp_path / "wide.gguf", tensors)
    with pytest.raises(CheckpointError, match="has num_layers=4, the model config says 8"):
        load_stage_weights(PRESETS["tiny-8"], 0, 8, str(wrong))


def test_open_reader_parses_a_file_once_and_again_when_it_changes(tmp_path: Path) -> None:
    """gguf_reader.open_reader: the same parsed reader for the same file, the same fields and
    tensors as gguf's own GGUFReader, and a fresh parse once the file is rewritten."""
    from gguf.gguf_reader import GGUFReader

    from helix_jax.model.gguf_reader import open_reader

    path = write_gguf(tmp_path / "r.gguf", gguf_tensors(_hf_tensors()))
    first = open_reader(path)
    assert open_reader(str(path)) is first
    stock = GGUFReader(str(path), "r")
    assert list(first.fields) == list(stock.fields)
    for key, field in stock.fields.items():
        assert first.fields[key].types == field.types and first.fields[key].contents() == field.contents(), key
    assert [t.name for t in first.tensors] == [t.name for t in stock.tensors]
    for ours, theirs in zip(first.tensors, stock.tensors):
        np.testing.assert_array_equal(ours.data, theirs.data)
    name = gguf_name("model.layers.0.mlp.up_proj.weight")
    write_gguf(path, gguf_tensors(_hf_tensors()), types={name: Q.Q8_0})  # same path, another size
    again = open_reader(path)
    assert again is not first and next(t for t in again.tensors if t.name == name).tensor_type == Q.Q8_0


@pytest.mark.parametrize("endian", ["little", "big"])
def test_the_quick_reader_parses_the_same_fields_as_ggufs_own(tmp_path: Path, endian: str) -> None:
    """helix_jax's reader (gguf_reader.py) cuts arrays into parts its own way: every field, part,
    dtype and value must equal `gguf.GGUFReader`'s, for arrays of strings (empty and non-ASCII
    ones too), of numbers, empty and nested arrays, in either byte order."""
    from helix_jax.model.gguf_reader import open_reader

    path = tmp_path / f"{endian}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.LITTLE if endian == "little" else gguf.GGUFEndian.BIG)
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "", "héllo", "Ġworld", "x" * 300])
    writer.add_token_types([1, 3, 1, 1, 1])
    writer.add_token_scores([0.0, -1.5, 2.25, 3.0, -0.5])
    writer.add_token_merges(["Ġ w", "h é"])
    writer.add_array("test.empty", [])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_string("test.string", "plain")
    writer.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, stock = open_reader(path), gguf.gguf_reader.GGUFReader(str(path), "r")
    assert stock.byte_order == ("I" if endian == "little" else "S") and list(ours.fields) == list(stock.fields)
    for name, field in stock.fields.items():
        mine = ours.fields[name]
        assert (mine.offset, mine.name, mine.data, mine.types) == (field.offset, field.name, field.data, field.types), name
        assert [(p.dtype, p.shape, p.tobytes()) for p in mine.parts] == [(p.dtype, p.shape, p.tobytes()) for p in field.parts], name
        assert repr(mine.contents()) == repr(field.contents()), name
    assert ours.fields["tokenizer.ggml.tokens"].contents() == ["<s>", "", "héllo", "Ġworld", "x" * 300]
    assert ours.data_offset == stock.data_offset and [t.name for t in ours.tensors] == ["token_embd.weight"]
    assert np.array_equal(np.asarray(ours.tensors[0].data), np.asarray(stock.tensors[0].data))
