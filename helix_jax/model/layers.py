"""Flax NNX building blocks of a LLaMA-family decoder layer.

Owns: RMSNorm, rotary embeddings (plain and LLaMA-3 scaled frequencies), grouped-query
attention writing an explicit KV cache and reading its window (or, for a batch of prompts that
all start at position 0, only the chunk's own keys), the SwiGLU MLP and `DecoderLayer`.
Sits in the runtime step of the data flow: `stage.py` stacks these layers into a layer-range
stage and `engine.py` runs the stage under `jax.jit`.

Conventions (match Hugging Face `LlamaForCausalLM`, so its checkpoints load unchanged):
kernels are `[in, out]`, with q/k/v and gate/up each fused into one kernel (`FusedLinear`,
whose parts `checkpoint.py` reads by their own names); rotary uses the rotate-half layout; norms,
softmax and rotary angles are computed in float32 and cast back to the model dtype.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from helix_jax.model.paged_cache import paged_decode_attention, paged_read, paged_write
from helix_jax.modelconfig import ModelConfig

_NEG_INF = -1e30  # finite, so fully masked padding rows never produce NaN


def jnp_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.dtype(config.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse rotary frequencies `[head_dim // 2]` (float32), LLaMA-3 scaled if configured."""
    dim = config.dim_per_head
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq.astype(np.float32)
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(inv_freq: np.ndarray, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin `[batch, tokens, head_dim]` (float32) for integer `positions [batch, tokens]`."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x [batch, tokens, heads, head_dim]` by the per-token angles (rotate-half layout)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype: jnp.dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


def normal_init(stddev: float):
    """Normal initializer drawn in float32 and then cast, so seeded random weights are the same
    model in every dtype (drawing directly in bf16 would give different values)."""
    draw = nnx.initializers.normal(stddev=stddev)
    return lambda key, shape, dtype=jnp.float32: draw(key, shape, jnp.float32).astype(dtype)


def _linear(n_in: int, n_out: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Linear:
    init = normal_init(1.0 / math.sqrt(n_in))
    return nnx.Linear(n_in, n_out, use_bias=False, dtype=dtype, param_dtype=dtype, kernel_init=init, rngs=rngs)


class FusedLinear(nnx.Module):
    """Several projections of the same input as one matmul (`kernel [in, sum(outs)]`), split
    after: one larger GEMM instead of several narrow ones (SmolLM2's q/k/v at 32 rows: 12% less
    time for the layers' matmuls on a 2-core CPU). The parts are drawn in turn from `rngs`, as
    separate `nnx.Linear`s would be, so seeded weights are the same model either way."""

    def __init__(self, n_in: int, outs: tuple[int, ...], dtype: jnp.dtype, rngs: nnx.Rngs):
        init = normal_init(1.0 / math.sqrt(n_in))
        self.kernel = nnx.Param(jnp.concatenate([init(rngs.params(), (n_in, n), dtype) for n in outs], axis=1))
        self.outs = outs

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        y = jnp.dot(x, self.kernel[...])
        bounds = np.cumsum(self.outs)[:-1].tolist()
        return jnp.split(y, bounds, axis=-1)


def fused_parts(config: ModelConfig) -> dict[str, tuple[tuple[str, int], ...]]:
    """Each FusedLinear of a layer (module path) -> its parts: (Hugging Face module, outputs)."""
    q, kv, f = config.num_heads * config.dim_per_head, config.num_kv_heads * config.dim_per_head, config.intermediate_size
    return {
        "self_attn.qkv_proj": (("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)),
        "mlp.gate_up_proj": (("mlp.gate_proj", f), ("mlp.up_proj", f)),
    }


def fused_outs(config: ModelConfig, module: str) -> tuple[int, ...]:
    """The output widths of one FusedLinear's parts, in order (from `fused_parts`)."""
    return tuple(outs for _, outs in fused_parts(config)[module])


class Attention(nnx.Module):
    """Grouped-query attention over the KV cache of one layer."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        dtype, h, d = jnp_dtype(config), config.hidden_size, config.dim_per_head
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, d
        self.qkv_proj = FusedLinear(h, fused_outs(config, "self_attn.qkv_proj"), dtype, rngs)
        self.o_proj = _linear(config.num_heads * d, h, dtype, rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, kv: "LayerKV") -> tuple[jax.Array, jax.Array, jax.Array]:
        """x `[B, T, hidden]` -> (out `[B, T, hidden]`, k_cache, v_cache updated for this layer).

        `kv` says where this step's tokens are written (rows/tokens not to be written point
        past the end of the cache and are dropped) and which cached positions each query
        may read (causal, own slot only).
        """
        b, t, _ = x.shape
        q, k, v = self.qkv_proj(x)
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv.page_size and kv.attention == "pallas" and t == 1:  # decode: the kernel reads the pages in place
            k_cache, v_cache, table = kv.write(k, v)
            lengths = jnp.where(kv.write_mask[:, 0], kv.query_pos[:, 0] + 1, 0).astype(jnp.int32)
            out = paged_decode_attention(q[:, 0] / math.sqrt(self.head_dim), k_cache, v_cache, table, lengths)
            return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), k_cache, v_cache
        k_cache, v_cache, pages = kv.store(k, v)

        def over_cache(_):  # every query reads the cached positions up to its own
            keys, values = kv.read(k_cache, v_cache, pages)
            return window_attention(q, keys, values, kv.query_pos)

        if t == 1:
            out = over_cache(None)
        else:  # a batch of prompts that all start at position 0 sees only its own keys
            out = jax.lax.cond(jnp.any(kv.query_pos[:, 0] > 0), over_cache, lambda _: chunk_attention(q, k, v), None)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), k_cache, v_cache


def window_attention(q: jax.Array, keys: jax.Array, values: jax.Array, query_pos: jax.Array) -> jax.Array:
    """Grouped-query attention of q `[B, T, heads, head_dim]` over a window of cached keys and
    values `[B, ctx, kv_heads, head_dim]` (window position = sequence position): each query reads
    the positions up to its own. Returns `[B, T, heads, head_dim]`."""
    b, t, heads, dim = q.shape
    ctx, kv_heads = keys.shape[1], keys.shape[2]
    qg = q.reshape(b, t, kv_heads, heads // kv_heads, dim)  # queries grouped per kv head
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys.astype(q.dtype), preferred_element_type=jnp.float32) / math.sqrt(dim)
    visible = jnp.arange(ctx)[None, None, :] <= query_pos[:, :, None]  # [B, T, ctx]
    scores = jnp.where(visible[:, None, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, values.astype(q.dtype)).reshape(b, t, heads, dim)


CHUNK_QUERY_BLOCK = 128


def chunk_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal grouped-query attention of a chunk that starts at position 0 over its own keys
    k, v `[B, T, kv_heads, head_dim]`: T x T instead of T x the cache window. Queries go in
    blocks of CHUNK_QUERY_BLOCK, each against the keys up to its last query, so the masked upper
    triangle is mostly not computed (a 512-token prompt: 10 of 16 blocks). Padding tokens come
    after a row's valid ones and no valid query reads them."""
    b, t, heads, dim = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, t, kv_heads, heads // kv_heads, dim)
    blocks = []
    for start in range(0, t, CHUNK_QUERY_BLOCK):
        end = min(start + CHUNK_QUERY_BLOCK, t)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg[:, start:end], k[:, :end], preferred_element_type=jnp.float32) / math.sqrt(dim)
        causal = np.arange(end)[None, :] <= np.arange(start, end)[:, None]  # static [block, end]
        probs = jax.nn.softmax(jnp.where(causal, scores, _NEG_INF), axis=-1).astype(q.dtype)
        blocks.append(jnp.einsum("bkgts,bskd->btkgd", probs, v[:, :end]))
    return jnp.concatenate(blocks, axis=1).reshape(b, t, heads, dim)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        dtype, h, f = jnp_dtype(config), config.hidden_size, config.intermediate_size
        self.gate_up_proj = FusedLinear(h, fused_outs(config, "mlp.gate_up_proj"), dtype, rngs)
        self.down_proj = _linear(f, h, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = self.gate_up_proj(x)
        return self.down_proj(jax.nn.silu(gate) * up)


@dataclasses.dataclass(frozen=True)
class LayerKV:
    """Per-call view of the stage's KV cache for one layer (built inside the traced step).

    Contiguous layout (page_size 0): caches `[layers, slots, max_seq, kv_heads, head_dim]`,
    `index` the row's slot `[B]`. Paged layout: page pools `[kv_heads, layers, pages, page_size,
    head_dim]` (paged_cache.py), `index` the rows' page tables `[B, layers, P]`; `attention`
    "pallas" reads decode steps' pages with JAX's paged-attention kernel, "gather" gathers them.
    """

    k_cache: jax.Array
    v_cache: jax.Array
    layer_index: jax.Array  # scalar: index of this layer inside the stage
    write_mask: jax.Array  # [B, T] tokens whose K/V this layer writes (valid and run)
    index: jax.Array  # [B] slot of each row, or [B, layers, P] page tables
    query_pos: jax.Array  # [B, T] absolute position of each query token
    context_len: int  # static: cached positions attention may read (contiguous layout)
    page_size: int = 0  # static: 0 = contiguous slots
    attention: str = "gather"  # static: paged decode attention backend (paged_cache.ATTENTION_BACKENDS)

    def write(self, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Paged: write this step's k, v `[B, T, kv_heads, head_dim]` into their pages; returns
        (k_cache, v_cache, this layer's page tables `[B, P]`)."""
        table = jax.lax.dynamic_index_in_dim(self.index, self.layer_index, axis=1, keepdims=False)
        k_cache, v_cache = paged_write(self.k_cache, self.v_cache, table, self.write_mask, self.query_pos, k, v, self.page_size)
        return k_cache, v_cache, table

    def store(self, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """Write this step's k, v `[B, T, kv_heads, head_dim]` (masked tokens are dropped);
        returns (k_cache, v_cache, the paged layer's page tables `[B, P]` or None)."""
        if self.page_size:
            return self.write(k, v)
        layer, max_seq = self.layer_index, self.k_cache.shape[2]
        write_slot = jnp.broadcast_to(self.index[:, None], self.query_pos.shape)
        write_pos = jnp.where(self.write_mask, self.query_pos, max_seq)  # past the end: dropped
        k_cache = self.k_cache.at[layer, write_slot, write_pos].set(k.astype(self.k_cache.dtype), mode="drop")
        v_cache = self.v_cache.at[layer, write_slot, write_pos].set(v.astype(self.v_cache.dtype), mode="drop")
        return k_cache, v_cache, None

    def read(self, k_cache: jax.Array, v_cache: jax.Array, table: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """The rows' attention windows of this layer: keys, values `[B, ctx, kv_heads, head_dim]`."""
        if self.page_size:
            assert table is not None
            return paged_read(k_cache, v_cache, table, self.page_size)
        ctx, layer = self.context_len, self.layer_index
        keys = jax.lax.dynamic_index_in_dim(k_cache, layer, 0, keepdims=False)[self.index, :ctx]
        values = jax.lax.dynamic_index_in_dim(v_cache, layer, 0, keepdims=False)[self.index, :ctx]
        return keys, values


class DecoderLayer(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp_dtype(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, kv: LayerKV) -> tuple[jax.Array, jax.Array, jax.Array]:
        attn_out, k_cache, v_cache = self.self_attn(self.input_layernorm(x), cos, sin, kv)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k_cache, v_cache
